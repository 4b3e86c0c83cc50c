package org.defcon.serving;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.Random;

import org.junit.jupiter.api.Test;

/** Pure-Java helpers: no TensorFlow needed. */
class DensityMapsTest {

    private static float[][] random(int rows, int cols, long seed) {
        Random rng = new Random(seed);
        float[][] a = new float[rows][cols];
        for (float[] row : a) {
            for (int c = 0; c < cols; c++) {
                row[c] = rng.nextFloat();
            }
        }
        return a;
    }

    @Test
    void padEdgeReplicatesBottomAndRight() {
        float[][] image = {{1, 2, 3}, {4, 5, 6}};
        float[][] padded = DensityMaps.padEdge(image, 4);
        assertArrayEquals(new float[][] {{1, 2, 3, 3}, {4, 5, 6, 6}, {4, 5, 6, 6}, {4, 5, 6, 6}}, padded);
        float[][] fits = new float[8][4];
        assertSame(fits, DensityMaps.padEdge(fits, 4));
        assertEquals(8, DensityMaps.roundUp(5, 4));
        assertEquals(4, DensityMaps.roundUp(4, 4));
    }

    @Test
    void cropKeepsTheTopLeft() {
        float[][] a = {{1, 2, 3}, {4, 5, 6}};
        assertArrayEquals(new float[][] {{1, 2}}, DensityMaps.crop(a, 1, 2));
        assertThrows(IllegalArgumentException.class, () -> DensityMaps.crop(a, 3, 1));
    }

    @Test
    void localCountsAreValidBoxSums() {
        float[][] d = random(9, 13, 1);
        int box = 4;
        float[][] local = DensityMaps.localCounts(d, box);
        assertEquals(9 - box + 1, local.length);
        assertEquals(13 - box + 1, local[0].length);
        double max = Double.NEGATIVE_INFINITY;
        for (int r = 0; r < local.length; r++) {
            for (int c = 0; c < local[0].length; c++) {
                double sum = 0;
                for (int i = 0; i < box; i++) {
                    for (int j = 0; j < box; j++) {
                        sum += d[r + i][c + j];
                    }
                }
                assertEquals(sum, local[r][c], 1e-5);
                max = Math.max(max, sum);
            }
        }
        assertEquals(max, DensityMaps.maxLocalCount(d, box), 1e-5);
        float[][] whole = DensityMaps.localCounts(d, 9);
        assertEquals(1, whole.length);
    }

    @Test
    void countIsTheSum() {
        assertEquals(10.5, DensityMaps.count(new float[][] {{1, 2.5f}, {3, 4}}), 0);
    }

    @Test
    void badBoxesAreRejected() {
        float[][] d = random(6, 8, 2);
        assertThrows(IllegalArgumentException.class, () -> DensityMaps.localCounts(d, 0));
        assertThrows(UnsupportedImageException.class, () -> DensityMaps.localCounts(d, 7));
    }
}
