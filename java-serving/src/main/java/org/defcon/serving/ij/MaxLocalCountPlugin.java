package org.defcon.serving.ij;

/**
 * Plugins &gt; DEFCoN &gt; Maximum local count...: the local count map (emitters in every box)
 * of every slice of the current stack, and a table of counts (slice, count, max local
 * count, and DEFCoN-ImageJ's columns: see {@link StackCounter.Result#table}). With a max-count
 * model folder (tf_max_count) only the table is made. Macro options: {@code model=} or
 * DEFCoN-ImageJ's {@code path=}, and {@code box=} (see {@link DefconCommand}).
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

    @Override
    String tableTitle() {
        return "Maximum local count";
    }
}
