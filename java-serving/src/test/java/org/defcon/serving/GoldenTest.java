package org.defcon.serving;

import static org.defcon.serving.GoldenFiles.TOLERANCE;
import static org.defcon.serving.GoldenFiles.assertClose;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import ij.IJ;
import ij.ImagePlus;
import ij.ImageStack;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.defcon.serving.ij.StackCounter;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;
import org.junit.jupiter.api.TestInstance;

/**
 * Java reproduces what Python computes: defcon's exports (the pretrained DEFCoN model and a
 * random network, density and max-count) on synthetic frames of several sizes, and the
 * reference DEFCoN-ImageJ model on its test stack.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class GoldenTest {

    private GoldenFiles golden;
    private final Map<String, DefconModel> models = new HashMap<>();

    @BeforeAll
    void loadGolden() {
        golden = GoldenFiles.load();
    }

    /**
     * For the tests on the reference models and test data: skips them (also in CI) when the
     * shared reference folder is absent; when it is present, the golden files must have the
     * reference cases (skip locally, fail in CI: make_golden.py was run without the folder).
     */
    private void requireReferenceCases() {
        Path reference = GoldenFiles.reference();
        if (!golden.hasReferenceCases()) {
            GoldenFiles.missing("the golden files in " + golden.root + " lack the reference cases although the "
                    + "reference folder " + reference + " exists: rerun 'python java-serving/make_golden.py "
                    + "--reference " + reference + "'");
        }
    }

    @AfterAll
    void closeModels() {
        models.values().forEach(DefconModel::close);
    }

    private DefconModel model(String key) {
        return models.computeIfAbsent(key, k -> DefconModel.load(golden.path(k)));
    }

    private float[][] input(String c) {
        return golden.array(golden.path("case." + c + ".input"), golden.getInt("case." + c + ".rows"),
                golden.getInt("case." + c + ".cols"));
    }

    @TestFactory
    List<DynamicTest> densityMapsMatchPython() {
        List<DynamicTest> tests = new ArrayList<>();
        for (String c : golden.cases()) {
            tests.add(DynamicTest.dynamicTest(c, () -> {
                String name = golden.get("case." + c + ".model");
                int rows = golden.getInt("case." + c + ".rows");
                int cols = golden.getInt("case." + c + ".cols");
                DefconModel model = model("model." + name + ".density");
                assertEquals(DefconModel.Kind.DENSITY, model.kind());
                float[][] density = model.predictDensity(input(c));
                float[][] expected = golden.array(golden.path("case." + c + ".density"), rows, cols);
                assertClose(expected, density, TOLERANCE, c + " density");
                System.out.printf("golden %-22s density max |java - python| = %.2g%n", c,
                        GoldenFiles.maxAbsDiff(expected, density));
                assertEquals(golden.getDouble("case." + c + ".count"), DensityMaps.count(density), 1e-3,
                        c + " count");
                if (golden.has("case." + c + ".local_counts")) {
                    int box = golden.getInt("model." + name + ".box");
                    float[][] local = DensityMaps.localCounts(density, box);
                    float[][] expectedLocal = golden.array(golden.path("case." + c + ".local_counts"),
                            rows - box + 1, cols - box + 1);
                    assertClose(expectedLocal, local, TOLERANCE, c + " local counts");
                    assertEquals(golden.getDouble("case." + c + ".max_local_count"),
                            DensityMaps.maxLocalCount(density, box), TOLERANCE, c + " max local count");
                }
            }));
        }
        return tests;
    }

    @TestFactory
    List<DynamicTest> maxCountModelsMatchPython() {
        List<DynamicTest> tests = new ArrayList<>();
        for (String c : golden.cases()) {
            if (!golden.has("case." + c + ".max_count")) {
                continue;
            }
            tests.add(DynamicTest.dynamicTest(c, () -> {
                DefconModel model = model("model." + golden.get("case." + c + ".model") + ".max_count");
                assertEquals(DefconModel.Kind.MAX_COUNT, model.kind());
                double expected = golden.getDouble("case." + c + ".max_count");
                float got = model.predictMaxCount(input(c));
                assertEquals(expected, got, TOLERANCE, c + " max count");
                System.out.printf("golden %-22s max count |java - python| = %.2g%n", c, Math.abs(expected - got));
            }));
        }
        return tests;
    }

    private ImagePlus testData() {
        requireReferenceCases();
        Path tif = GoldenFiles.reference("defcon-imagej", "test_data.tif");
        ImagePlus imp = IJ.openImage(tif.toString());
        assertTrue(imp != null, "cannot open " + tif);
        assertEquals(16, imp.getBitDepth(), "test_data.tif is 16-bit");
        assertEquals(golden.getInt("test_data.frames"), imp.getStackSize());
        return imp;
    }

    private float[][][] testDataDensity(String name) {
        return golden.stack(golden.path("test_data." + name + ".density"), golden.getInt("test_data.frames"),
                golden.getInt("test_data.rows"), golden.getInt("test_data.cols"));
    }

    @Test
    void referenceDefconImageJModelMatchesPythonOnTestData() {
        requireReferenceCases();
        Path dir = GoldenFiles.reference("defcon-imagej", "tf_density_count");
        float[][][] expected = testDataDensity("reference");
        double[] counts = golden.getDoubles("test_data.reference.counts");
        ImageStack stack = testData().getStack();
        double worst = 0;
        try (DefconModel model = DefconModel.load(dir)) {
            assertEquals(DefconModel.Kind.DENSITY, model.kind());
            for (int i = 1; i <= stack.getSize(); i++) {
                float[][] density = model.predictDensity(stack.getProcessor(i)); // 16-bit processor
                assertClose(expected[i - 1], density, TOLERANCE, "reference model, slice " + i);
                worst = Math.max(worst, GoldenFiles.maxAbsDiff(expected[i - 1], density));
                assertEquals(counts[i - 1], DensityMaps.count(density), 1e-3, "count of slice " + i);
            }
        }
        System.out.printf("golden reference model on test_data.tif: max |java - python| = %.2g%n", worst);
    }

    @Test
    void exportOfPretrainedModelReproducesReferenceModelInJava() {
        requireReferenceCases();
        Path reference = GoldenFiles.reference("defcon-imagej", "tf_density_count");
        ImageStack stack = testData().getStack();
        try (DefconModel ours = DefconModel.load(golden.path("model.tf13.density"));
             DefconModel theirs = DefconModel.load(reference)) {
            for (int i = 1; i <= stack.getSize(); i++) {
                assertClose(theirs.predictDensity(stack.getProcessor(i)), ours.predictDensity(stack.getProcessor(i)),
                        TOLERANCE, "defcon export vs DEFCoN-ImageJ model, slice " + i);
            }
        }
    }

    @Test
    void stackCounterProcessesEverySliceOfTestData() {
        ImagePlus imp = testData();
        float[][][] expected = testDataDensity("tf13");
        double[] counts = golden.getDoubles("test_data.tf13.counts");
        double[] maxLocal = golden.getDoubles("test_data.tf13.max_local_counts");
        int box = golden.getInt("model.tf13.box");
        List<Integer> progress = new ArrayList<>();
        StackCounter.Result result = StackCounter.count(model("model.tf13.density"), imp.getStack(), null, box,
                StackCounter.Maps.DENSITY, (done, total) -> progress.add(done));
        assertEquals(imp.getStackSize(), result.maps.getSize());
        assertEquals(imp.getStackSize(), result.table.size());
        assertEquals(imp.getStackSize(), progress.size());
        for (int i = 1; i <= imp.getStackSize(); i++) {
            float[][] map = ImageJImages.toArray(result.maps.getProcessor(i));
            assertClose(expected[i - 1], map, TOLERANCE, "density map of slice " + i);
            assertEquals(i, result.table.getValue(StackCounter.SLICE, i - 1), 0);
            assertEquals(counts[i - 1], result.table.getValue(StackCounter.COUNT, i - 1), 1e-3);
            assertEquals(maxLocal[i - 1], result.table.getValue(StackCounter.MAX_LOCAL_COUNT, i - 1), TOLERANCE);
            // The same numbers under DEFCoN-ImageJ's column names.
            assertEquals(counts[i - 1], result.table.getValue(StackCounter.EXACT_COUNT, i - 1), 1e-3);
            double rounded = result.table.getValue(StackCounter.ROUNDED_COUNT, i - 1);
            assertEquals(Math.round(result.table.getValue(StackCounter.EXACT_COUNT, i - 1)), rounded, 0);
            assertEquals(counts[i - 1], rounded, 0.5 + 1e-3);
            assertEquals(maxLocal[i - 1], result.table.getValue(StackCounter.maxLocalCountColumn(box), i - 1),
                    TOLERANCE);
        }
    }
}
