package org.defcon.serving;

import static org.junit.jupiter.api.Assertions.assertEquals;

import org.junit.jupiter.api.Test;
import org.tensorflow.TensorFlow;

/** The tests run on the TensorFlow Java version the build asked for (-Dtensorflow.version). */
class TensorFlowVersionTest {

    @Test
    void runtimeIsTheRequestedVersion() {
        String requested = System.getProperty("defcon.tensorflow.version");
        System.out.println("TensorFlow Java runtime: " + TensorFlow.version() + " (requested " + requested + ")");
        if (requested != null) {
            assertEquals(requested, TensorFlow.version());
        }
    }
}
