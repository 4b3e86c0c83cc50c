package org.defcon.serving.ij;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import ij.ImagePlus;
import ij.ImageStack;
import ij.Macro;
import ij.Prefs;
import ij.WindowManager;
import ij.measure.ResultsTable;
import ij.process.ShortProcessor;

import java.awt.Rectangle;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.atomic.AtomicReference;

import org.defcon.serving.DefconModel;
import org.defcon.serving.DensityMaps;
import org.defcon.serving.GoldenFiles;
import org.defcon.serving.ImageJImages;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/**
 * Macros written for the original DEFCoN-ImageJ plugin (LEB-EPFL), whose menu entries ours
 * reuse, keep working: its macro key {@code path=} gives the model folder (ours, {@code model=},
 * still works), and the results table has its columns "Rounded count", "Exact count" and
 * "Max local count (7x7)" next to ours.
 */
class MacroCompatibilityTest {

    private static final String DEFAULT = "/default/DEFCoN/tf_density_count";

    @AfterEach
    void forgetPrefs() {
        Prefs.set(DefconCommand.MODEL_KEY, (String) null);
        Prefs.set(DefconCommand.BOX_KEY, (String) null);
    }

    // ---- macro options, without a model ----

    @Test
    void pathKeyOfDefconImageJGivesTheModelFolder() {
        DefconCommand.Settings s = DefconCommand.fromMacroOptions("path=/x/tf_density_count", DEFAULT, 7);
        assertEquals("/x/tf_density_count", s.folder);
        assertEquals(7, s.box);
        s = DefconCommand.fromMacroOptions("path=[/my data/DEFCoN/tf_max_count] box=5", DEFAULT, 7);
        assertEquals("/my data/DEFCoN/tf_max_count", s.folder);
        assertEquals(5, s.box);
        // The key of DEFCoN-ImageJ's documentation.
        assertEquals("/y/tf_density_count",
                DefconCommand.fromMacroOptions("load=/y/tf_density_count", DEFAULT, 7).folder);
    }

    @Test
    void modelKeyStillWorksAndWinsOverPath() {
        DefconCommand.Settings s = DefconCommand.fromMacroOptions("model=[/a/tf_density_count] box=9", DEFAULT, 7);
        assertEquals("/a/tf_density_count", s.folder);
        assertEquals(9, s.box);
        assertEquals("/a/m", DefconCommand.fromMacroOptions("path=/b/p model=/a/m", DEFAULT, 7).folder);
        assertEquals("/a/m", DefconCommand.fromMacroOptions("model=/a/m path=/b/p", DEFAULT, 7).folder);
        // What the macro recorder writes for our dialog reads back the same.
        s = DefconCommand.fromMacroOptions(new DefconCommand.Settings("/c d/tf_density_count", 3).toString(),
                DEFAULT, 7);
        assertEquals("/c d/tf_density_count", s.folder);
        assertEquals(3, s.box);
    }

    @Test
    void missingKeysTakeTheDefaultsAndBadValuesAreClearErrors() {
        DefconCommand.Settings s = DefconCommand.fromMacroOptions("box=11", DEFAULT, 7);
        assertEquals(DEFAULT, s.folder);
        assertEquals(11, s.box);
        assertEquals(6, DefconCommand.fromMacroOptions("", DEFAULT, 6).box);
        // "filepath=" is not "path=" (ImageJ's rule: a key is not preceded by a letter).
        assertEquals(DEFAULT, DefconCommand.fromMacroOptions("filepath=/z", DEFAULT, 7).folder);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> DefconCommand.fromMacroOptions("path=/x box=seven", DEFAULT, 7));
        assertTrue(e.getMessage().contains("box"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> DefconCommand.fromMacroOptions("path=/x box=0", DEFAULT, 7));
        assertThrows(IllegalArgumentException.class, () -> DefconCommand.fromMacroOptions("path=[]", DEFAULT, 7));
    }

    // ---- the commands run from a macro ----

    /** A command that keeps what it would show, since windows cannot open in the tests. */
    private static final class Shown {
        volatile StackCounter.Result result;
        volatile Rectangle region;
    }

    private static DefconCommand capturing(boolean density, Shown shown) {
        if (density) {
            return new DensityMapPlugin() {
                @Override
                void show(ImagePlus imp, Rectangle region, StackCounter.Result result) {
                    shown.result = result;
                    shown.region = region;
                }
            };
        }
        return new MaxLocalCountPlugin() {
            @Override
            void show(ImagePlus imp, Rectangle region, StackCounter.Result result) {
                shown.result = result;
                shown.region = region;
            }
        };
    }

    /**
     * Runs {@code command} as {@code run(name, options)} from a macro does: on a thread named
     * "Run$_...", with the macro options and the current image set for that thread.
     */
    private static void runAsMacro(DefconCommand command, ImagePlus imp, String options) throws Exception {
        AtomicReference<Throwable> failure = new AtomicReference<>();
        Thread thread = new Thread(() -> {
            try {
                command.run("");
            } catch (Throwable t) {
                failure.set(t);
            }
        }, "Run$_defcon-macro-test");
        Macro.setOptions(thread, options);
        WindowManager.setTempCurrentImage(thread, imp);
        try {
            thread.start();
            thread.join(120_000);
        } finally {
            Macro.setOptions(thread, null);
            WindowManager.setTempCurrentImage(thread, null);
        }
        assertFalse(thread.isAlive(), "the command did not finish");
        if (failure.get() != null) {
            throw new AssertionError("the command failed", failure.get());
        }
    }

    private static ImagePlus stack16(int width, int height, int slices) {
        ImageStack stack = new ImageStack(width, height);
        for (int i = 0; i < slices; i++) {
            ShortProcessor sp = new ShortProcessor(width, height);
            for (int y = 0; y < height; y++) {
                for (int x = 0; x < width; x++) {
                    int spot = (x - 6 - 3 * i) * (x - 6 - 3 * i) + (y - 9) * (y - 9) < 5 ? 1500 : 0;
                    sp.set(x, y, 100 + (x * 7 + y * 13 + i * 5) % 40 + spot);
                }
            }
            stack.addSlice("frame " + (i + 1), sp);
        }
        return new ImagePlus("macro test", stack);
    }

    private static final List<String> ORIGINAL_DENSITY_COLUMNS = Arrays.asList("Rounded count", "Exact count");
    private static final String ORIGINAL_MAX_COLUMN = "Max local count (7x7)";

    /** The table's columns and values for a density model: ours and DEFCoN-ImageJ's, per slice. */
    private static void assertDensityTable(DefconModel model, ImageStack stack, int box, ResultsTable table) {
        assertEquals(stack.getSize(), table.size());
        for (String column : ORIGINAL_DENSITY_COLUMNS) {
            assertTrue(table.columnExists(column), "no column '" + column + "' in " + table.getColumnHeadings());
        }
        String maxColumn = "Max local count (" + box + "x" + box + ")";
        assertEquals(maxColumn, StackCounter.maxLocalCountColumn(box));
        assertTrue(table.columnExists(maxColumn), "no column '" + maxColumn + "' in " + table.getColumnHeadings());
        for (int i = 1; i <= stack.getSize(); i++) {
            float[][] density = model.predictDensity(ImageJImages.toArray(stack.getProcessor(i)));
            double count = DensityMaps.count(density);
            double maxLocal = DensityMaps.maxLocalCount(density, box);
            int row = i - 1;
            assertEquals(i, table.getValue("Slice", row), 0);
            assertEquals(count, table.getValue("Count", row), 1e-9);
            assertEquals(maxLocal, table.getValue("Max local count", row), 1e-6);
            assertEquals(count, table.getValue("Exact count", row), 1e-9);
            assertEquals(Math.round(count), table.getValue("Rounded count", row), 0);
            assertEquals(maxLocal, table.getValue(maxColumn, row), 1e-6);
        }
    }

    @Test
    void densityMapMacroWithPathKeyUsesThatModel() throws Exception {
        GoldenFiles golden = GoldenFiles.load();
        Path folder = golden.path("model.random.density");
        // A remembered folder that does not exist: only path= can make the command succeed.
        Prefs.set(DefconCommand.MODEL_KEY, "/no/such/remembered/tf_density_count");
        ImagePlus imp = stack16(36, 28, 3);
        Shown shown = new Shown();
        runAsMacro(capturing(true, shown), imp, "path=[" + folder + "]");
        assertNotNull(shown.result, "no result: the command reported an error (see the test's output)");
        assertNull(shown.region);
        assertEquals(3, shown.result.maps.getSize());
        assertEquals(folder.toString(), Prefs.get(DefconCommand.MODEL_KEY, ""));
        try (DefconModel model = DefconModel.load(folder)) {
            assertDensityTable(model, imp.getStack(), 7, shown.result.table);
        }
    }

    @Test
    void maximumLocalCountMacroWithPathKeyAndMaxCountModel() throws Exception {
        GoldenFiles golden = GoldenFiles.load();
        Path folder = golden.path("model.random.max_count");
        ImagePlus imp = stack16(32, 24, 2);
        Shown shown = new Shown();
        runAsMacro(capturing(false, shown), imp, "path=" + folder);
        assertNotNull(shown.result, "no result: the command reported an error (see the test's output)");
        assertNull(shown.result.maps);
        ResultsTable table = shown.result.table;
        assertTrue(table.columnExists(ORIGINAL_MAX_COLUMN), table.getColumnHeadings());
        try (DefconModel model = DefconModel.load(folder)) {
            assertEquals(DefconModel.Kind.MAX_COUNT, model.kind());
            for (int i = 1; i <= 2; i++) {
                float expected = model.predictMaxCount(imp.getStack().getProcessor(i));
                assertEquals(expected, table.getValue(ORIGINAL_MAX_COLUMN, i - 1), 0);
                assertEquals(expected, table.getValue("Max local count", i - 1), 0);
            }
        }
    }

    @Test
    void modelKeyAndBoxStillWorkFromAMacro() throws Exception {
        GoldenFiles golden = GoldenFiles.load();
        Path folder = golden.path("model.random.density");
        ImagePlus imp = stack16(30, 45, 2);
        Shown shown = new Shown();
        runAsMacro(capturing(false, shown), imp, "model=[" + folder + "] box=5");
        assertNotNull(shown.result, "no result: the command reported an error (see the test's output)");
        assertEquals(30 - 5 + 1, shown.result.maps.getWidth());
        assertFalse(shown.result.table.columnExists(ORIGINAL_MAX_COLUMN), "box 5 is not a 7x7 count");
        try (DefconModel model = DefconModel.load(folder)) {
            assertDensityTable(model, imp.getStack(), 5, shown.result.table);
        }
    }

    /** The original's own model and test stack, through the original's macro call. */
    @Test
    void defconImageJModelAndMacroGiveItsColumns() throws Exception {
        Path folder = GoldenFiles.reference("defcon-imagej", "tf_density_count"); // skips without it
        ImagePlus imp = ij.IJ.openImage(GoldenFiles.reference("defcon-imagej", "test_data.tif").toString());
        assertNotNull(imp);
        Shown shown = new Shown();
        runAsMacro(capturing(true, shown), imp, "path=" + folder);
        assertNotNull(shown.result, "no result: the command reported an error (see the test's output)");
        try (DefconModel model = DefconModel.load(folder)) {
            assertDensityTable(model, imp.getStack(), 7, shown.result.table);
        }
    }

    @Test
    void resultsTablesHaveTheTitlesOfDefconImageJ() {
        // Macros select DEFCoN-ImageJ's tables by these titles.
        assertEquals("Fluorophore count", new DensityMapPlugin().tableTitle());
        assertEquals("Maximum local count", new MaxLocalCountPlugin().tableTitle());
    }
}
