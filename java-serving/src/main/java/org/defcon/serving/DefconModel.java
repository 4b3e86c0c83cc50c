package org.defcon.serving;

import ij.process.ImageProcessor;

import java.io.File;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.nio.FloatBuffer;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.locks.ReadWriteLock;
import java.util.concurrent.locks.ReentrantReadWriteLock;

import org.tensorflow.Graph;
import org.tensorflow.Operation;
import org.tensorflow.Output;
import org.tensorflow.SavedModelBundle;
import org.tensorflow.Tensor;

/**
 * A DEFCoN network loaded from a TensorFlow 1.x SavedModel folder, as written by
 * {@code defcon export MODEL --fiji DIR} ({@code DEFCoN/tf_density_count} and
 * {@code DEFCoN/tf_max_count}) or by the original DEFCoN ({@code save_tf_model}).
 *
 * <p>The model is loaded like the DEFCoN-ImageJ plugin does: {@code SavedModelBundle.load(dir,
 * "serve")}, feed {@code input_tensor} (float {@code [1, h, w, 1]}, raw pixel values), fetch
 * {@code output_tensor}: a density map {@code [1, h, w, 1]} or, for a max-count model, the
 * maximum local count {@code [1, 1]}.
 *
 * <p><b>Any image size.</b> The network needs sides that are multiples of 4. Other images
 * are padded on the bottom and right edges by replicating the last row and column
 * ({@link DensityMaps#padEdge}), and the density map is cropped back to the image's size,
 * so it always has the input's shape. (A max-count model sees the padded image.) defcon's
 * Python side uses the same rule.
 *
 * <p><b>Resources.</b> A model holds native TensorFlow memory: close it (try-with-resources).
 * The predict methods may be called from several threads at once; {@link #close()} waits
 * for running predictions.
 *
 * <p>Binary compatible with TensorFlow Java 1.6 to 1.15 whichever of them it was compiled
 * against: it calls no method of {@code org.tensorflow.Operation}, which changed from a class
 * to an interface in between.
 *
 * <pre>{@code
 * try (DefconModel model = DefconModel.load("Fiji.app/plugins/DEFCoN/tf_density_count")) {
 *     float[][] density = model.predictDensity(image);        // float[rows][cols]
 *     double count = DensityMaps.count(density);
 *     double maxLocal = DensityMaps.maxLocalCount(density, 7);
 * }
 * }</pre>
 */
public final class DefconModel implements AutoCloseable {

    /** The SavedModel tag DEFCoN models are saved with. */
    public static final String TAG = "serve";
    /** The input placeholder: float {@code [batch, rows, cols, 1]}, raw pixel values. */
    public static final String INPUT = "input_tensor";
    /** The output: density {@code [batch, rows, cols, 1]} or max count {@code [batch, 1]}. */
    public static final String OUTPUT = "output_tensor";

    /** What a model returns. */
    public enum Kind {
        /** A density map of the image's size; its sum is the emitter count. */
        DENSITY,
        /** One number: the maximum emitter count in a box of the model's size. */
        MAX_COUNT,
        /** Not yet known: the graph does not declare the output's rank (set by the first run). */
        UNKNOWN
    }

    private final SavedModelBundle bundle;
    private final String directory;
    private final ReadWriteLock lock = new ReentrantReadWriteLock();
    private volatile Kind kind;
    private boolean closed;

    private DefconModel(SavedModelBundle bundle, String directory, Kind kind) {
        this.bundle = bundle;
        this.directory = directory;
        this.kind = kind;
    }

    /**
     * Loads a model folder.
     *
     * @param directory a SavedModel folder holding {@code saved_model.pb}
     * @return the model; close it when done
     * @throws ModelException if the folder does not exist, is not a SavedModel with tag
     *                        {@code serve}, or has no {@code input_tensor} or {@code output_tensor}
     */
    public static DefconModel load(String directory) {
        if (directory == null || directory.trim().isEmpty()) {
            throw new ModelException("no model folder given (expected a folder such as "
                    + "Fiji.app/plugins/DEFCoN/tf_density_count)");
        }
        File dir = new File(directory);
        if (!dir.exists()) {
            throw new ModelException(directory + ": model folder not found");
        }
        if (!dir.isDirectory()) {
            throw new ModelException(directory + ": not a folder (a DEFCoN model is a SavedModel folder "
                    + "such as DEFCoN/tf_density_count, holding saved_model.pb)");
        }
        if (!new File(dir, "saved_model.pb").isFile() && !new File(dir, "saved_model.pbtxt").isFile()) {
            throw new ModelException(directory + ": not a TensorFlow SavedModel (no saved_model.pb); "
                    + "expected a folder written by 'defcon export MODEL --fiji DIR', such as "
                    + "DIR/DEFCoN/tf_density_count");
        }
        SavedModelBundle bundle;
        try {
            bundle = SavedModelBundle.load(dir.getAbsolutePath(), TAG);
        } catch (RuntimeException e) {
            throw new ModelException(directory + ": cannot load the SavedModel with tag '" + TAG + "': "
                    + e.getMessage(), e);
        } catch (UnsatisfiedLinkError e) {
            throw new ModelException("cannot load TensorFlow's native library (needed for " + directory
                    + "): " + e.getMessage(), e);
        }
        try {
            Graph graph = bundle.graph();
            Object input = operation(graph, INPUT);
            Object output = operation(graph, OUTPUT);
            if (input == null || output == null) {
                throw new ModelException(directory + ": the model has no tensor named '"
                        + (input == null ? INPUT : OUTPUT) + "'; a DEFCoN model feeds '" + INPUT
                        + "' and fetches '" + OUTPUT + "' (export it with 'defcon export')");
            }
            int rank = outputRank(output);
            Kind kind = rank == 4 ? Kind.DENSITY : rank == 2 || rank == 1 ? Kind.MAX_COUNT : Kind.UNKNOWN;
            return new DefconModel(bundle, directory, kind);
        } catch (RuntimeException e) {
            bundle.close();
            throw e;
        }
    }

    /** Loads a model folder; see {@link #load(String)}. */
    public static DefconModel load(Path directory) {
        return load(directory == null ? null : directory.toString());
    }

    /** Loads a model folder; see {@link #load(String)}. */
    public static DefconModel load(File directory) {
        return load(directory == null ? null : directory.getPath());
    }

    /** {@code graph.operation(name)}, whose return type differs between TF 1.6 and 1.15. */
    private static Object operation(Graph graph, String name) {
        try {
            Method method = Graph.class.getMethod("operation", String.class);
            return method.invoke(graph, name);
        } catch (InvocationTargetException e) {
            Throwable cause = e.getCause();
            throw cause instanceof RuntimeException ? (RuntimeException) cause
                    : new ModelException("cannot read the model graph: " + cause, cause);
        } catch (ReflectiveOperationException e) {
            throw new ModelException("unsupported TensorFlow Java version: " + e, e);
        }
    }

    /** The declared rank of an operation's first output, or -1 if unknown. */
    private static int outputRank(Object operation) {
        try {
            // Operation is a final class in TF 1.6 and an interface in 1.15: call it reflectively.
            Method method = Operation.class.getMethod("output", int.class);
            Output<?> output = (Output<?>) method.invoke(operation, 0);
            return output.shape().numDimensions();
        } catch (ReflectiveOperationException | RuntimeException | LinkageError e) {
            return -1;
        }
    }

    /** What the model returns (from the graph's declared output shape, else from a first run). */
    public Kind kind() {
        return kind;
    }

    /** The folder the model was loaded from. */
    public String directory() {
        return directory;
    }

    /**
     * Predicts the density map of an image.
     *
     * @param image {@code float[rows][cols]} raw pixel values, any size
     * @return the density map, {@code float[rows][cols]}; its sum is the emitter count
     * @throws IllegalArgumentException if the array is empty or not rectangular
     * @throws ModelException           if this is a max-count model or the model fails
     */
    public float[][] predictDensity(float[][] image) {
        DensityMaps.checkRectangular(image, "image");
        int rows = image.length;
        int cols = image[0].length;
        float[][] padded = DensityMaps.padEdge(image, DensityMaps.SIDE_MULTIPLE);
        if (kind == Kind.MAX_COUNT) {
            throw new ModelException(directory + " is a max-count model: use predictMaxCount, or load "
                    + "the density model (tf_density_count)");
        }
        float[] flat;
        long[] shape;
        Tensor<?> out = run(padded);
        try {
            shape = out.shape();
            if (shape.length != 4 || shape[0] != 1 || shape[1] != padded.length
                    || shape[2] != padded[0].length || shape[3] != 1) {
                if (shape.length <= 2) {
                    kind = Kind.MAX_COUNT;
                }
                throw new ModelException(directory + ": expected a density map of shape [1, " + padded.length
                        + ", " + padded[0].length + ", 1], the model returned " + java.util.Arrays.toString(shape)
                        + (shape.length <= 2 ? " (a max-count model: use predictMaxCount)" : ""));
            }
            kind = Kind.DENSITY;
            FloatBuffer buffer = FloatBuffer.allocate(padded.length * padded[0].length);
            out.writeTo(buffer);
            flat = buffer.array();
        } finally {
            out.close();
        }
        int paddedCols = padded[0].length;
        float[][] density = new float[rows][cols];
        for (int r = 0; r < rows; r++) {
            System.arraycopy(flat, r * paddedCols, density[r], 0, cols);
        }
        return density;
    }

    /**
     * Predicts the density map of an ImageJ image (8, 16 or 32-bit; raw values).
     *
     * @param ip the image (its ROI is ignored: crop first to process a part)
     * @return {@code float[height][width]}
     * @throws UnsupportedImageException for RGB images
     * @see #predictDensity(float[][])
     */
    public float[][] predictDensity(ImageProcessor ip) {
        return predictDensity(ImageJImages.toArray(ip));
    }

    /**
     * Runs a max-count model: the maximum number of emitters in any box of the model's size.
     * For a density model use {@link DensityMaps#maxLocalCount} on its density map instead.
     *
     * @param image {@code float[rows][cols]} raw pixel values, at least the box size
     * @throws ModelException if this is a density model or the model fails
     */
    public float predictMaxCount(float[][] image) {
        DensityMaps.checkRectangular(image, "image");
        if (kind == Kind.DENSITY) {
            throw new ModelException(directory + " is a density model: use predictDensity and "
                    + "DensityMaps.maxLocalCount, or load the max-count model (tf_max_count)");
        }
        Tensor<?> out = run(DensityMaps.padEdge(image, DensityMaps.SIDE_MULTIPLE));
        try {
            long[] shape = out.shape();
            long size = 1;
            for (long s : shape) {
                size *= s;
            }
            if (size != 1 || shape.length > 2) {
                if (shape.length == 4) {
                    kind = Kind.DENSITY;
                }
                throw new ModelException(directory + ": expected one max count ([1, 1]), the model returned "
                        + java.util.Arrays.toString(shape));
            }
            kind = Kind.MAX_COUNT;
            FloatBuffer buffer = FloatBuffer.allocate(1);
            out.writeTo(buffer);
            return buffer.get(0);
        } finally {
            out.close();
        }
    }

    /** Runs a max-count model on an ImageJ image; see {@link #predictMaxCount(float[][])}. */
    public float predictMaxCount(ImageProcessor ip) {
        return predictMaxCount(ImageJImages.toArray(ip));
    }

    private Tensor<?> run(float[][] padded) {
        int rows = padded.length;
        int cols = padded[0].length;
        FloatBuffer buffer = FloatBuffer.allocate(rows * cols);
        for (float[] row : padded) {
            buffer.put(row);
        }
        buffer.flip();
        lock.readLock().lock();
        try {
            if (closed) {
                throw new ModelException(directory + ": the model has been closed");
            }
            Tensor<Float> input = Tensor.create(new long[] {1, rows, cols, 1}, buffer);
            try {
                List<Tensor<?>> outputs = bundle.session().runner().feed(INPUT, input).fetch(OUTPUT).run();
                return outputs.get(0);
            } catch (RuntimeException e) {
                throw new ModelException(directory + ": the model failed on a " + rows + "x" + cols
                        + " image: " + e.getMessage(), e);
            } finally {
                input.close();
            }
        } finally {
            lock.readLock().unlock();
        }
    }

    /** Releases the TensorFlow session and graph. Idempotent. */
    @Override
    public void close() {
        lock.writeLock().lock();
        try {
            if (!closed) {
                closed = true;
                bundle.close();
            }
        } finally {
            lock.writeLock().unlock();
        }
    }

    @Override
    public String toString() {
        return "DefconModel[" + directory + ", " + kind + (closed ? ", closed" : "") + "]";
    }
}
