package org.defcon.serving;

/**
 * Array helpers for DEFCoN density maps: padding to the network's size multiple, counts,
 * local count maps and the maximum local count.
 *
 * <p>Arrays are {@code float[rows][cols]} (row-major, {@code a[row][col]}), the layout of a
 * TensorFlow {@code [1, rows, cols, 1]} tensor.
 */
public final class DensityMaps {

    /** Frame sides must be multiples of this for a DEFCoN network (two stride-2 stages). */
    public static final int SIDE_MULTIPLE = 4;

    private DensityMaps() {
    }

    /**
     * Checks that {@code image} is a non-empty rectangular array.
     *
     * @param image the array to check
     * @param what  what it is, for the message
     * @throws IllegalArgumentException if it is null, empty or ragged
     */
    public static void checkRectangular(float[][] image, String what) {
        if (image == null) {
            throw new IllegalArgumentException(what + " is null");
        }
        if (image.length == 0 || image[0] == null || image[0].length == 0) {
            throw new IllegalArgumentException(what + " is empty (it needs at least one row and one column)");
        }
        int cols = image[0].length;
        for (int r = 0; r < image.length; r++) {
            if (image[r] == null || image[r].length != cols) {
                throw new IllegalArgumentException(what + " is not rectangular: row " + r + " has "
                        + (image[r] == null ? "no" : String.valueOf(image[r].length))
                        + " columns, row 0 has " + cols);
            }
        }
    }

    /** The smallest multiple of {@code multiple} that is at least {@code n}. */
    public static int roundUp(int n, int multiple) {
        return ((n + multiple - 1) / multiple) * multiple;
    }

    /**
     * Pads an image on the bottom and right edges, replicating the last row and column, to
     * sides that are multiples of {@code multiple}. This is the padding rule of defcon
     * (Python and Java): the network sees the image at its top-left corner, and its output
     * is cropped back to the image's size.
     *
     * @param image    {@code float[rows][cols]}
     * @param multiple the size multiple (4 for DEFCoN)
     * @return {@code image} itself when no padding is needed, else a new array
     */
    public static float[][] padEdge(float[][] image, int multiple) {
        checkRectangular(image, "image");
        if (multiple < 1) {
            throw new IllegalArgumentException("multiple must be at least 1, not " + multiple);
        }
        int rows = image.length;
        int cols = image[0].length;
        int paddedRows = roundUp(rows, multiple);
        int paddedCols = roundUp(cols, multiple);
        if (paddedRows == rows && paddedCols == cols) {
            return image;
        }
        float[][] padded = new float[paddedRows][paddedCols];
        for (int r = 0; r < paddedRows; r++) {
            float[] source = image[Math.min(r, rows - 1)];
            System.arraycopy(source, 0, padded[r], 0, cols);
            float last = source[cols - 1];
            for (int c = cols; c < paddedCols; c++) {
                padded[r][c] = last;
            }
        }
        return padded;
    }

    /**
     * The top-left {@code rows} x {@code cols} part of an array.
     *
     * @return {@code array} itself when it already has that size, else a new array
     */
    public static float[][] crop(float[][] array, int rows, int cols) {
        checkRectangular(array, "array");
        if (rows < 1 || cols < 1 || rows > array.length || cols > array[0].length) {
            throw new IllegalArgumentException("cannot crop a " + array.length + "x" + array[0].length
                    + " array to " + rows + "x" + cols);
        }
        if (rows == array.length && cols == array[0].length) {
            return array;
        }
        float[][] out = new float[rows][];
        for (int r = 0; r < rows; r++) {
            out[r] = java.util.Arrays.copyOf(array[r], cols);
        }
        return out;
    }

    /**
     * The number of emitters a density map predicts: the sum of its pixels (in double).
     */
    public static double count(float[][] density) {
        checkRectangular(density, "density map");
        double sum = 0;
        for (float[] row : density) {
            for (float v : row) {
                sum += v;
            }
        }
        return sum;
    }

    /**
     * The local count map: the sum of the density in every {@code box} x {@code box} box
     * that fits in the map ('valid', step 1), as DEFCoN's maximum local count. Element
     * {@code [r][c]} is the count in rows {@code r..r+box-1}, columns {@code c..c+box-1}.
     *
     * @param density {@code float[rows][cols]}
     * @param box     the box side in pixels (DEFCoN uses 7)
     * @return {@code float[rows - box + 1][cols - box + 1]}
     * @throws IllegalArgumentException   if {@code box < 1}
     * @throws UnsupportedImageException if the map is smaller than the box
     */
    public static float[][] localCounts(float[][] density, int box) {
        checkRectangular(density, "density map");
        if (box < 1) {
            throw new IllegalArgumentException("box must be at least 1 pixel, not " + box);
        }
        int rows = density.length;
        int cols = density[0].length;
        if (box > rows || box > cols) {
            throw new UnsupportedImageException("a " + rows + "x" + cols + " image is smaller than the "
                    + box + "x" + box + " counting box");
        }
        // Summed-area table in double: s[r][c] = sum of density[0..r-1][0..c-1].
        double[][] s = new double[rows + 1][cols + 1];
        for (int r = 0; r < rows; r++) {
            double rowSum = 0;
            for (int c = 0; c < cols; c++) {
                rowSum += density[r][c];
                s[r + 1][c + 1] = s[r][c + 1] + rowSum;
            }
        }
        float[][] out = new float[rows - box + 1][cols - box + 1];
        for (int r = 0; r + box <= rows; r++) {
            for (int c = 0; c + box <= cols; c++) {
                out[r][c] = (float) (s[r + box][c + box] - s[r][c + box] - s[r + box][c] + s[r][c]);
            }
        }
        return out;
    }

    /**
     * The maximum local count: the largest number of emitters in any {@code box} x
     * {@code box} box of the density map.
     *
     * @see #localCounts(float[][], int)
     */
    public static double maxLocalCount(float[][] density, int box) {
        float[][] local = localCounts(density, box);
        double max = Double.NEGATIVE_INFINITY;
        for (float[] row : local) {
            for (float v : row) {
                max = Math.max(max, v);
            }
        }
        return max;
    }
}
