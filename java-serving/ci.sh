#!/usr/bin/env bash
# The whole Java check of defcon-serving, from a fresh machine with Python 3.11 (defcon
# installed: pip install -e .[test]), JDK 17 and Maven:
#   1. make_golden.py: export DEFCoN models with defcon.export and write golden files;
#   2. build with TensorFlow Java 1.15.0 and run the tests (mvn package: tests, then the jar);
#   3. run the same tests with TensorFlow Java 1.6.0 (DEFCoN-ImageJ's) on the classes
#      compiled against 1.15.0, as in a Fiji whose TensorFlow is 1.6: this checks binary
#      compatibility, not only source compatibility;
#   4. check the plugin jar (plugins.config, Java 8 bytecode).
# Exits non-zero on any failure. Environment: PYTHON (default python3), MVN (default mvn).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
MVN="${MVN:-mvn}"
GOLDEN="$HERE/target/golden"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
MAVEN_ARGS=(-B -ntp "-Ddefcon.golden=$GOLDEN" -Ddefcon.requireGolden=true)

cd "$HERE"
t0=$(date +%s)
step() { echo; echo "== [java-serving ci, $(( $(date +%s) - t0 )) s] $*"; }

step "make_golden.py -> $GOLDEN"
"$PYTHON" make_golden.py --out "$GOLDEN"

step "TensorFlow Java 1.15.0: build, test, package"
rm -rf "$HERE/target/classes" "$HERE/target/test-classes"   # always compile against 1.15.0
"$MVN" "${MAVEN_ARGS[@]}" -Dtensorflow.version=1.15.0 package

step "TensorFlow Java 1.6.0: the same classes, tested again"
"$MVN" "${MAVEN_ARGS[@]}" -Dtensorflow.version=1.6.0 surefire:test

step "plugin jar"
JAR="$(ls "$HERE"/target/defcon_serving-*.jar)"
jar tf "$JAR" | grep -qx "plugins.config" || { echo "plugins.config missing from $JAR" >&2; exit 1; }
javap -v -cp "$JAR" org.defcon.serving.DefconModel | grep -q "major version: 52" \
    || { echo "$JAR: classes are not Java 8 bytecode" >&2; exit 1; }
echo "$JAR: plugins.config present, Java 8 bytecode"

step "java-serving: all checks passed"
