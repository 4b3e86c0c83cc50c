package org.defcon.serving.ij;

/**
 * Plugins &gt; DEFCoN &gt; Density map...: the density map of every slice of the current
 * stack, and a table of counts (slice, count, max local count).
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
}
