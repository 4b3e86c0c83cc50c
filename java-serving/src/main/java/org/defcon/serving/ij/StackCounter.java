package org.defcon.serving.ij;

import ij.ImageStack;
import ij.measure.ResultsTable;
import ij.process.ImageProcessor;

import java.awt.Rectangle;

import org.defcon.serving.DefconModel;
import org.defcon.serving.DensityMaps;
import org.defcon.serving.ImageJImages;

/**
 * Counts emitters in every slice of an ImageJ stack with a DEFCoN model: the work of the
 * "Density map..." and "Maximum local count..." commands, without any window, so that it
 * runs headless and in tests.
 */
public final class StackCounter {

    /** Which image stack to make besides the results table. */
    public enum Maps {
        /** One density map per slice, of the slice's (or the region's) size. */
        DENSITY,
        /** One local count map per slice: box sums, {@code (h - box + 1) x (w - box + 1)}. */
        LOCAL_COUNTS,
        /** No image, only the table. */
        NONE
    }

    /** Receives progress: called after each slice with (slices done, total). */
    public interface Progress {
        void update(int done, int total);
    }

    /** What {@link #count} returns. */
    public static final class Result {
        /** The maps, one slice per input slice, or null for {@link Maps#NONE} and max-count models. */
        public final ImageStack maps;
        /**
         * One row per slice: "Slice", "Count", "Max local count", then the same numbers under the
         * column names of the original DEFCoN-ImageJ plugin: "Rounded count", "Exact count",
         * "Max local count (BxB)" (see {@link StackCounter#maxLocalCountColumn}). A max-count
         * model gives only "Slice", "Max local count" and "Max local count (7x7)".
         */
        public final ResultsTable table;

        Result(ImageStack maps, ResultsTable table) {
            this.maps = maps;
            this.table = table;
        }
    }

    /** Column names of the results table. */
    public static final String SLICE = "Slice";
    public static final String COUNT = "Count";
    public static final String MAX_LOCAL_COUNT = "Max local count";

    /*
     * The columns of the original DEFCoN-ImageJ plugin (LEB-EPFL), whose menu entries ours
     * reuse, written next to ours so that macros reading them with getResult() keep working.
     */
    /** The count rounded to the nearest integer (DEFCoN-ImageJ's "Density map..." table). */
    public static final String ROUNDED_COUNT = "Rounded count";
    /** The count: the sum of the density map, as {@link #COUNT} (DEFCoN-ImageJ's "Density map..." table). */
    public static final String EXACT_COUNT = "Exact count";
    /** The box of DEFCoN-ImageJ's max-count network, in its column name "Max local count (7x7)". */
    public static final int ORIGINAL_BOX = 7;

    /**
     * {@code "Max local count (BxB)"}: the maximum local count with a box of side {@code box},
     * as {@link #MAX_LOCAL_COUNT}; with the default box 7 it is the column of DEFCoN-ImageJ's
     * "Maximum local count..." table, "Max local count (7x7)". A max-count model's value goes
     * under {@code maxLocalCountColumn(ORIGINAL_BOX)}, as in DEFCoN-ImageJ.
     */
    public static String maxLocalCountColumn(int box) {
        return MAX_LOCAL_COUNT + " (" + box + "x" + box + ")";
    }

    private StackCounter() {
    }

    /**
     * Runs the model on every slice of {@code stack}.
     *
     * @param model    a density model (or a max-count model: then only the table, with the
     *                 model's own box, is made)
     * @param stack    8, 16 or 32-bit slices of any size
     * @param region   the part of each slice to process, or null for the whole slice
     * @param box      box side in pixels for the maximum local count (density models)
     * @param maps     which maps to return
     * @param progress called after each slice, or null
     * @return the maps and the results table
     * @throws org.defcon.serving.DefconException for RGB stacks, a box larger than the
     *                                              region, or a model failure
     */
    public static Result count(DefconModel model, ImageStack stack, Rectangle region, int box, Maps maps,
                               Progress progress) {
        if (model == null || stack == null) {
            throw new IllegalArgumentException("model and stack are required");
        }
        Rectangle bounds = region == null ? new Rectangle(0, 0, stack.getWidth(), stack.getHeight())
                : region.intersection(new Rectangle(0, 0, stack.getWidth(), stack.getHeight()));
        if (bounds.isEmpty()) {
            throw new IllegalArgumentException("the region " + region + " lies outside the "
                    + stack.getWidth() + "x" + stack.getHeight() + " image");
        }
        int n = stack.getSize();
        ResultsTable table = new ResultsTable();
        ImageStack out = null;
        for (int i = 1; i <= n; i++) {
            ImageProcessor ip = stack.getProcessor(i);
            ip.setRoi(bounds);
            float[][] image = ImageJImages.toArray(ip.crop());
            table.incrementCounter();
            table.addValue(SLICE, i);
            if (model.kind() == DefconModel.Kind.MAX_COUNT) {
                float maxCount = model.predictMaxCount(image);
                table.addValue(MAX_LOCAL_COUNT, maxCount);
                table.addValue(maxLocalCountColumn(ORIGINAL_BOX), maxCount);
            } else {
                float[][] density = model.predictDensity(image);
                float[][] local = DensityMaps.localCounts(density, box);
                double count = DensityMaps.count(density);
                double maxLocal = max(local);
                table.addValue(COUNT, count);
                table.addValue(MAX_LOCAL_COUNT, maxLocal);
                table.addValue(ROUNDED_COUNT, Math.round(count));
                table.addValue(EXACT_COUNT, count);
                table.addValue(maxLocalCountColumn(box), maxLocal);
                float[][] map = maps == Maps.DENSITY ? density : maps == Maps.LOCAL_COUNTS ? local : null;
                if (map != null) {
                    if (out == null) {
                        out = new ImageStack(map[0].length, map.length);
                    }
                    String label = stack.getShortSliceLabel(i);
                    out.addSlice(label == null || label.isEmpty() ? "slice " + i : label,
                            ImageJImages.toProcessor(map));
                }
            }
            if (progress != null) {
                progress.update(i, n);
            }
        }
        return new Result(out, table);
    }

    private static double max(float[][] a) {
        double m = Double.NEGATIVE_INFINITY;
        for (float[] row : a) {
            for (float v : row) {
                m = Math.max(m, v);
            }
        }
        return m;
    }
}
