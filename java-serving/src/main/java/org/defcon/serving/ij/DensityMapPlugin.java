package org.defcon.serving.ij;

/**
 * Plugins &gt; DEFCoN &gt; Density map...: the density map of every slice of the current
 * stack, and a table of counts (slice, count, max local count, and DEFCoN-ImageJ's columns:
 * see {@link StackCounter.Result#table}). Macro options: {@code model=} or DEFCoN-ImageJ's
 * {@code path=}, and {@code box=} (see {@link DefconCommand}).
 */
public class DensityMapPlugin extends DefconCommand {

    @Override
    String title() {
        return "DEFCoN density map";
    }

    @Override
    StackCounter.Maps maps() {
        return StackCounter.Maps.DENSITY;
    }

    @Override
    String mapTitle(String imageTitle) {
        return "Density map of " + imageTitle;
    }

    @Override
    String tableTitle() {
        return "Fluorophore count";
    }
}
