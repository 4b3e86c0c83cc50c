package org.defcon.serving;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Properties;

import org.junit.jupiter.api.Assumptions;

/**
 * The golden files written by make_golden.py ({@code -Ddefcon.golden}) and the shared
 * reference folder ({@code -Ddefcon.reference}).
 *
 * <p>When the golden files are missing, tests are skipped on a developer's machine and fail
 * in CI ({@code -Ddefcon.requireGolden=true}, or the {@code CI} environment variable set):
 * ci.sh writes them. When the shared reference folder is missing, the tests that need it are
 * always skipped, with the reason (it is not part of this project).
 *
 * <p>Public for the tests of {@code org.defcon.serving.ij}.
 */
public final class GoldenFiles {

    /** Tolerance of the golden comparisons (float32 maps of values up to a few units). */
    public static final double TOLERANCE = 1e-4;

    final Path root;
    final Properties props;

    private GoldenFiles(Path root, Properties props) {
        this.root = root;
        this.props = props;
    }

    static boolean required() {
        String ci = System.getenv("CI");
        return Boolean.getBoolean("defcon.requireGolden")
                || (ci != null && !ci.isEmpty() && !"false".equalsIgnoreCase(ci));
    }

    /** Skips (locally) or fails (CI) the calling test with {@code message}. */
    public static void missing(String message) {
        if (required()) {
            fail(message);
        }
        Assumptions.abort(message);
    }

    public static GoldenFiles load() {
        String dir = System.getProperty("defcon.golden", "target/golden");
        Path root = Paths.get(dir).toAbsolutePath();
        Path file = root.resolve("cases.properties");
        if (!Files.isRegularFile(file)) {
            missing(file + " not found: run 'python java-serving/make_golden.py' first (ci.sh does)");
        }
        Properties props = new Properties();
        try (InputStream in = Files.newInputStream(file)) {
            props.load(in);
        } catch (IOException e) {
            throw new AssertionError("cannot read " + file, e);
        }
        return new GoldenFiles(root, props);
    }

    /** Where the shared reference folder should be: {@code -Ddefcon.reference}, else {@code ../../shared/reference}. */
    public static Path referenceFolder() {
        return Paths.get(System.getProperty("defcon.reference", "../../shared/reference")).toAbsolutePath().normalize();
    }

    /**
     * The shared reference folder ({@code ../../shared/reference} from java-serving, or
     * {@code -Ddefcon.reference}); skips the calling test (JUnit assumption, also in CI) when it
     * or the part {@code parts} of it that the test needs is absent.
     */
    public static Path reference(String... parts) {
        Path dir = referenceFolder();
        if (!Files.isDirectory(dir.resolve("defcon-imagej"))) {
            Assumptions.abort("skipped: this test needs the reference DEFCoN models of the shared reference folder, "
                    + "not found at " + dir + " (set -Ddefcon.reference=DIR)");
        }
        Path path = dir;
        for (String part : parts) {
            path = path.resolve(part);
        }
        if (!Files.exists(path)) {
            Assumptions.abort("skipped: this test needs " + path + ", absent from the shared reference folder");
        }
        return path;
    }

    /** Whether make_golden.py wrote the cases that need the reference folder. */
    public boolean hasReferenceCases() {
        return "true".equals(props.getProperty("reference_cases"));
    }

    String get(String key) {
        String value = props.getProperty(key);
        if (value == null) {
            fail("cases.properties has no '" + key + "'");
        }
        return value;
    }

    boolean has(String key) {
        return props.containsKey(key);
    }

    int getInt(String key) {
        return Integer.parseInt(get(key));
    }

    double getDouble(String key) {
        return Double.parseDouble(get(key));
    }

    double[] getDoubles(String key) {
        return Arrays.stream(get(key).split(",")).mapToDouble(Double::parseDouble).toArray();
    }

    List<String> cases() {
        List<String> out = new ArrayList<>();
        for (String c : get("cases").split(",")) {
            if (!c.isEmpty()) {
                out.add(c);
            }
        }
        return out;
    }

    public Path path(String key) {
        return root.resolve(get(key));
    }

    /** Reads a raw little-endian float32 file of {@code n} values. */
    float[] floats(Path file, int n) {
        byte[] bytes;
        try {
            bytes = Files.readAllBytes(file);
        } catch (IOException e) {
            throw new AssertionError("cannot read " + file, e);
        }
        assertEquals(4L * n, bytes.length, file + ": size");
        float[] out = new float[n];
        ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(out);
        return out;
    }

    /** Reads a {@code rows x cols} float32 array file. */
    float[][] array(Path file, int rows, int cols) {
        float[] flat = floats(file, rows * cols);
        float[][] out = new float[rows][cols];
        for (int r = 0; r < rows; r++) {
            System.arraycopy(flat, r * cols, out[r], 0, cols);
        }
        return out;
    }

    /** Reads {@code frames} arrays of {@code rows x cols} from one file. */
    float[][][] stack(Path file, int frames, int rows, int cols) {
        float[] flat = floats(file, frames * rows * cols);
        float[][][] out = new float[frames][rows][cols];
        for (int f = 0; f < frames; f++) {
            for (int r = 0; r < rows; r++) {
                System.arraycopy(flat, (f * rows + r) * cols, out[f][r], 0, cols);
            }
        }
        return out;
    }

    /** Asserts two arrays have the same shape and agree within {@code tolerance}. */
    static void assertClose(float[][] expected, float[][] actual, double tolerance, String what) {
        assertEquals(expected.length, actual.length, what + ": rows");
        assertEquals(expected[0].length, actual[0].length, what + ": columns");
        double worst = 0;
        int worstR = 0;
        int worstC = 0;
        for (int r = 0; r < expected.length; r++) {
            for (int c = 0; c < expected[0].length; c++) {
                double d = Math.abs((double) expected[r][c] - actual[r][c]);
                if (!(d <= worst)) { // also catches NaN
                    worst = Double.isNaN(d) ? Double.POSITIVE_INFINITY : d;
                    worstR = r;
                    worstC = c;
                }
            }
        }
        if (worst > tolerance) {
            fail(String.format("%s: largest difference %.3g at [%d][%d] (expected %s, got %s) exceeds %.1g",
                    what, worst, worstR, worstC, expected[worstR][worstC], actual[worstR][worstC], tolerance));
        }
    }

    static double maxAbsDiff(float[][] a, float[][] b) {
        double worst = 0;
        for (int r = 0; r < a.length; r++) {
            for (int c = 0; c < a[0].length; c++) {
                worst = Math.max(worst, Math.abs((double) a[r][c] - b[r][c]));
            }
        }
        return worst;
    }
}
