package org.defcon.serving;

/**
 * An image the network cannot process: RGB images (a DEFCoN network counts emitters in
 * one fluorescence channel), or an image smaller than a requested counting box.
 */
public class UnsupportedImageException extends DefconException {
    private static final long serialVersionUID = 1L;

    public UnsupportedImageException(String message) {
        super(message);
    }
}
