package org.defcon.serving.ij;

/**
 * Plugins &gt; DEFCoN &gt; Maximum local count...: the local count map (emitters in every box)
 * of every slice of the current stack, and a table of counts (slice, count, max local
 * count). With a max-count model folder (tf_max_count) only the table is made.
 */
public class MaxLocalCountPlugin extends DefconCommand {

    @Override
    String title() {
        return "DEFCoN maximum local count";
    }

    @Override
    StackCounter.Maps maps() {
        return StackCounter.Maps.LOCAL_COUNTS;
    }

    @Override
    String mapTitle(String imageTitle) {
        return "Local counts of " + imageTitle;
    }
}
