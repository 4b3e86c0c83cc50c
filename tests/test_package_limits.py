"""Opening a package has a bounded cost, and malformed ones give one-line errors."""

import zipfile

import pytest

from defcon.errors import IntegrityError, ModelFileError
from defcon.package_reader import describe_package, load_package

RDF = "type: model\nname: x\nformat_version: 0.5.3\nattachments:\n  - source: notes.txt\n"


def make_zip(path, entries, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def test_unlisted_entries_are_refused_before_extraction(tmp_path):
    path = make_zip(tmp_path / "p.zip", {"rdf.yaml": RDF, "notes.txt": "hi", "extra.bin": "x"})
    with pytest.raises(IntegrityError, match="'extra.bin' is not listed in rdf.yaml"):
        load_package(path)


def test_zip_bombs_and_oversized_packages_are_refused(tmp_path, monkeypatch):
    bomb = make_zip(tmp_path / "bomb.zip", {"rdf.yaml": RDF, "notes.txt": b"\0" * (64 << 20)})
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(IntegrityError, match="notes.txt' expands .* zip bomb"):
        load_package(bomb)
    big = make_zip(
        tmp_path / "big.zip", {"rdf.yaml": RDF, "notes.txt": b"x" * 5000}, zipfile.ZIP_STORED
    )
    monkeypatch.setenv("DEFCON_PACKAGE_MAX_BYTES", "4000")
    with pytest.raises(IntegrityError, match="over the .* limit"):
        load_package(big)


def test_yaml_alias_bombs_and_huge_rdfs_are_refused(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
        for i in range(8)
    ]
    bomb = make_zip(tmp_path / "alias.zip", {"rdf.yaml": "\n".join(lines) + "\n"})
    with pytest.raises(ModelFileError, match="YAML aliases"):
        load_package(bomb)
    huge = make_zip(
        tmp_path / "huge.zip", {"rdf.yaml": "name: x\n" + "# pad\n" * 300_000}, zipfile.ZIP_STORED
    )
    with pytest.raises(ModelFileError, match="over the .* bytes"):
        load_package(huge)


@pytest.mark.parametrize(
    "rdf",
    [
        "type: model\nattachments: 5\nconfig: [1, 2]\n",
        "type: model\nweights: [a, b]\n",
        "type: model\ninputs: {a: 1}\n",
        "- just\n- a list\n",
        "a: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    ],
)
def test_malformed_rdf_fields_are_one_line_errors(tmp_path, rdf):
    path = make_zip(tmp_path / "bad.zip", {"rdf.yaml": rdf})
    for reader in (load_package, describe_package):
        with pytest.raises(ModelFileError, match="bad.zip: "):
            reader(path)
