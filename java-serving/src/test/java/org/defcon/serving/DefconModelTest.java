package org.defcon.serving;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import ij.ImageStack;
import ij.process.ByteProcessor;
import ij.process.ColorProcessor;
import ij.process.FloatProcessor;
import ij.process.ShortProcessor;

import java.awt.Rectangle;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;

import org.defcon.serving.ij.StackCounter;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.io.TempDir;

/** Loading, errors, image types and resources of {@link DefconModel}. */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class DefconModelTest {

    private GoldenFiles golden;
    private DefconModel density;

    @BeforeAll
    void load() {
        golden = GoldenFiles.load();
        density = DefconModel.load(golden.path("model.random.density"));
    }

    @AfterAll
    void close() {
        if (density != null) {
            density.close();
        }
    }

    private static float[][] ramp(int rows, int cols) {
        float[][] a = new float[rows][cols];
        for (int r = 0; r < rows; r++) {
            for (int c = 0; c < cols; c++) {
                a[r][c] = (r * 7 + c * 13) % 50 + (r == 5 && c == 6 ? 400 : 0);
            }
        }
        return a;
    }

    @Test
    void missingFolderIsAClearError() {
        ModelException e = assertThrows(ModelException.class, () -> DefconModel.load("/no/such/defcon/model"));
        assertTrue(e.getMessage().contains("/no/such/defcon/model"), e.getMessage());
        assertTrue(e.getMessage().contains("not found"), e.getMessage());
        assertThrows(ModelException.class, () -> DefconModel.load((String) null));
    }

    @Test
    void fileOrFolderWithoutSavedModelIsAClearError(@TempDir Path tmp) throws IOException {
        Path file = Files.write(tmp.resolve("model.h5"), new byte[] {1, 2, 3});
        ModelException notFolder = assertThrows(ModelException.class, () -> DefconModel.load(file));
        assertTrue(notFolder.getMessage().contains("not a folder"), notFolder.getMessage());
        ModelException empty = assertThrows(ModelException.class, () -> DefconModel.load(tmp));
        assertTrue(empty.getMessage().contains("saved_model.pb"), empty.getMessage());
    }

    @Test
    void corruptSavedModelIsAClearError(@TempDir Path tmp) throws IOException {
        Files.write(tmp.resolve("saved_model.pb"), "not a protocol buffer".getBytes("UTF-8"));
        ModelException e = assertThrows(ModelException.class, () -> DefconModel.load(tmp));
        assertTrue(e.getMessage().contains("cannot load"), e.getMessage());
    }

    @Test
    void savedModelWithoutDefconTensorsIsAClearError() {
        Path dir = golden.path("model.bad.no_input_tensor");
        ModelException e = assertThrows(ModelException.class, () -> DefconModel.load(dir));
        assertTrue(e.getMessage().contains("input_tensor"), e.getMessage());
    }

    @Test
    void kindsAreDetectedAndMisuseIsAClearError() {
        assertEquals(DefconModel.Kind.DENSITY, density.kind());
        assertThrows(ModelException.class, () -> density.predictMaxCount(ramp(16, 16)));
        try (DefconModel max = DefconModel.load(golden.path("model.random.max_count"))) {
            assertEquals(DefconModel.Kind.MAX_COUNT, max.kind());
            ModelException e = assertThrows(ModelException.class, () -> max.predictDensity(ramp(16, 16)));
            assertTrue(e.getMessage().contains("predictMaxCount"), e.getMessage());
        }
    }

    @Test
    void referenceMaxCountModelLoadsAndRuns() {
        Path dir = GoldenFiles.reference("defcon-example-serving", "tf_max_count"); // skips without it
        try (DefconModel max = DefconModel.load(dir)) {
            assertEquals(DefconModel.Kind.MAX_COUNT, max.kind());
            assertTrue(Float.isFinite(max.predictMaxCount(ramp(32, 32))));
        }
    }

    @Test
    void densityHasTheInputShapeForAnySize() {
        for (int[] size : new int[][] {{1, 1}, {3, 5}, {16, 16}, {17, 30}, {32, 48}}) {
            float[][] d = density.predictDensity(ramp(size[0], size[1]));
            assertEquals(size[0], d.length);
            assertEquals(size[1], d[0].length);
        }
    }

    @Test
    void paddingIsEdgeReplicationThenCrop() {
        float[][] image = ramp(17, 30);
        float[][] padded = DensityMaps.padEdge(image, 4);
        float[][] full = density.predictDensity(padded);
        float[][] cropped = DensityMaps.crop(full, 17, 30);
        assertArrayEquals(cropped, density.predictDensity(image));
    }

    @Test
    void flatFrameGivesFiniteDensity() {
        float[][] flat = new float[16][16];
        for (float[] row : flat) {
            java.util.Arrays.fill(row, 123f);
        }
        float[][] d = density.predictDensity(flat);
        float[][] zeros = density.predictDensity(new float[16][16]);
        for (int r = 0; r < 16; r++) {
            for (int c = 0; c < 16; c++) {
                assertTrue(Float.isFinite(d[r][c]));
            }
        }
        // A flat frame normalises to zeros whatever its level.
        assertArrayEquals(zeros, d);
    }

    @Test
    void imageJProcessorsGiveTheRawValues() {
        int w = 20;
        int h = 12;
        ByteProcessor bp = new ByteProcessor(w, h);
        ShortProcessor sp = new ShortProcessor(w, h);
        FloatProcessor fp = new FloatProcessor(w, h);
        float[][] values = new float[h][w];
        for (int y = 0; y < h; y++) {
            for (int x = 0; x < w; x++) {
                int v = (x * 31 + y * 17) % 250;
                bp.set(x, y, v);
                sp.set(x, y, v * 200); // above 32767: unsigned
                fp.setf(x, y, v * 200);
                values[y][x] = v * 200;
            }
        }
        assertArrayEquals(values, ImageJImages.toArray(sp));
        assertArrayEquals(values, ImageJImages.toArray(fp));
        float[][] fromFloat = density.predictDensity(fp);
        assertArrayEquals(fromFloat, density.predictDensity(sp));
        assertArrayEquals(density.predictDensity(values), fromFloat);
        // 8-bit values are 1/200 of these: the network normalises, so nearly the same map.
        assertTrue(GoldenFiles.maxAbsDiff(fromFloat, density.predictDensity(bp)) < 1e-5);
    }

    @Test
    void rgbImagesAreRejected() {
        ColorProcessor cp = new ColorProcessor(16, 16);
        UnsupportedImageException e = assertThrows(UnsupportedImageException.class,
                () -> density.predictDensity(cp));
        assertTrue(e.getMessage().contains("RGB"), e.getMessage());
        ImageStack stack = new ImageStack(16, 16);
        stack.addSlice(cp);
        assertThrows(UnsupportedImageException.class,
                () -> StackCounter.count(density, stack, null, 7, StackCounter.Maps.DENSITY, null));
    }

    @Test
    void raggedOrEmptyArraysAreRejected() {
        assertThrows(IllegalArgumentException.class, () -> density.predictDensity(new float[][] {{1, 2}, {3}}));
        assertThrows(IllegalArgumentException.class, () -> density.predictDensity(new float[0][0]));
        assertThrows(IllegalArgumentException.class, () -> density.predictDensity((float[][]) null));
    }

    @Test
    void stackCounterProcessesARegionAndMakesLocalCountMaps() {
        ImageStack stack = new ImageStack(40, 30);
        for (int i = 0; i < 3; i++) {
            FloatProcessor fp = new FloatProcessor(40, 30);
            for (int y = 0; y < 30; y++) {
                for (int x = 0; x < 40; x++) {
                    fp.setf(x, y, (x * (i + 3) + y * 5) % 37);
                }
            }
            stack.addSlice("s" + i, fp);
        }
        Rectangle region = new Rectangle(5, 3, 21, 18);
        StackCounter.Result result = StackCounter.count(density, stack, region, 5,
                StackCounter.Maps.LOCAL_COUNTS, null);
        assertEquals(3, result.maps.getSize());
        assertEquals(21 - 5 + 1, result.maps.getWidth());
        assertEquals(18 - 5 + 1, result.maps.getHeight());
        ij.process.ImageProcessor crop = stack.getProcessor(2);
        crop.setRoi(region);
        float[][] expectedDensity = density.predictDensity(crop.crop());
        assertEquals(DensityMaps.count(expectedDensity), result.table.getValue(StackCounter.COUNT, 1), 1e-9);
        assertEquals(DensityMaps.maxLocalCount(expectedDensity, 5),
                result.table.getValue(StackCounter.MAX_LOCAL_COUNT, 1), 1e-6);
        UnsupportedImageException tooBig = assertThrows(UnsupportedImageException.class,
                () -> StackCounter.count(density, stack, region, 19, StackCounter.Maps.NONE, null));
        assertTrue(tooBig.getMessage().contains("19x19"), tooBig.getMessage());
    }

    @Test
    void closeIsIdempotentAndClosedModelsRefuseWork() {
        DefconModel model = DefconModel.load(golden.path("model.random.density"));
        model.predictDensity(ramp(8, 8));
        model.close();
        model.close();
        ModelException e = assertThrows(ModelException.class, () -> model.predictDensity(ramp(8, 8)));
        assertTrue(e.getMessage().contains("closed"), e.getMessage());
        assertFalse(model.toString().isEmpty());
    }
}
