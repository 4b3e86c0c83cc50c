package org.defcon.serving;

import ij.process.ColorProcessor;
import ij.process.FloatProcessor;
import ij.process.ImageProcessor;

/**
 * Conversions between ImageJ processors and {@code float[rows][cols]} arrays.
 *
 * <p>Kept apart from {@link DefconModel} so that the array API works without ImageJ on the
 * class path.
 */
public final class ImageJImages {

    private ImageJImages() {
    }

    /**
     * The raw pixel values of an 8-bit, 16-bit or 32-bit image as floats (8 and 16-bit values
     * are unsigned; calibration and display range are ignored: the network normalises every
     * frame itself).
     *
     * @param ip an 8-bit, 16-bit or 32-bit grey image (its ROI is ignored)
     * @return {@code float[height][width]}
     * @throws UnsupportedImageException for RGB images
     */
    public static float[][] toArray(ImageProcessor ip) {
        if (ip == null) {
            throw new IllegalArgumentException("image is null");
        }
        if (ip instanceof ColorProcessor || ip.getBitDepth() == 24) {
            throw new UnsupportedImageException("RGB images are not supported: DEFCoN counts emitters in "
                    + "one fluorescence channel (split the channels or convert the image to 8, 16 or "
                    + "32-bit first)");
        }
        int width = ip.getWidth();
        int height = ip.getHeight();
        float[][] out = new float[height][width];
        for (int y = 0; y < height; y++) {
            float[] row = out[y];
            for (int x = 0; x < width; x++) {
                row[x] = ip.getf(x, y);
            }
        }
        return out;
    }

    /** A 32-bit ImageJ image of an array ({@code width = cols}, {@code height = rows}). */
    public static FloatProcessor toProcessor(float[][] array) {
        DensityMaps.checkRectangular(array, "array");
        int height = array.length;
        int width = array[0].length;
        float[] pixels = new float[width * height];
        for (int y = 0; y < height; y++) {
            System.arraycopy(array[y], 0, pixels, y * width, width);
        }
        return new FloatProcessor(width, height, pixels, null);
    }
}
