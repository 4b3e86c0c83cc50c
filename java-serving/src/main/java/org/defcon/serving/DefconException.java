package org.defcon.serving;

/**
 * Base class of every error that defcon-serving raises on purpose: a folder that is not a
 * DEFCoN model, a model without the expected tensors, an image it cannot process.
 *
 * <p>Unchecked, so callers may catch it where they can tell the user, typically around
 * {@link DefconModel#load(String)} and the predict methods.
 */
public class DefconException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public DefconException(String message) {
        super(message);
    }

    public DefconException(String message, Throwable cause) {
        super(message, cause);
    }
}
