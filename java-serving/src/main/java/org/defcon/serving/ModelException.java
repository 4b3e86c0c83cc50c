package org.defcon.serving;

/**
 * A model folder that does not exist, is not a TensorFlow SavedModel with tag {@code serve},
 * lacks the {@code input_tensor} / {@code output_tensor} tensors, or returns an output of an
 * unexpected shape; also any use of a closed model.
 */
public class ModelException extends DefconException {
    private static final long serialVersionUID = 1L;

    public ModelException(String message) {
        super(message);
    }

    public ModelException(String message, Throwable cause) {
        super(message, cause);
    }
}
