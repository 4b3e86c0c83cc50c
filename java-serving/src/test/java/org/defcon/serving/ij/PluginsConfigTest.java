package org.defcon.serving.ij;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import ij.plugin.PlugIn;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

import org.junit.jupiter.api.Test;

/** plugins.config puts both commands under Plugins > DEFCoN and names real PlugIn classes. */
class PluginsConfigTest {

    @Test
    void menuEntriesNamePlugInClasses() throws IOException, ClassNotFoundException {
        List<String> entries = new ArrayList<>();
        try (InputStream in = getClass().getClassLoader().getResourceAsStream("plugins.config")) {
            assertNotNull(in, "plugins.config is not on the class path");
            BufferedReader reader = new BufferedReader(new InputStreamReader(in, StandardCharsets.UTF_8));
            for (String line; (line = reader.readLine()) != null;) {
                line = line.trim();
                if (line.isEmpty() || line.startsWith("#")) {
                    continue;
                }
                String[] parts = line.split(",", 3);
                assertEquals(3, parts.length, line);
                assertEquals("Plugins>DEFCoN", parts[0].trim());
                Class<?> cls = Class.forName(parts[2].trim());
                assertTrue(PlugIn.class.isAssignableFrom(cls), cls + " is not an ImageJ PlugIn");
                entries.add(parts[1].trim());
            }
        }
        assertEquals(2, entries.size());
        assertTrue(entries.contains("\"Density map...\""));
        assertTrue(entries.contains("\"Maximum local count...\""));
        assertTrue(DefconCommand.defaultModelFolder().endsWith("DEFCoN/tf_density_count")
                || DefconCommand.defaultModelFolder().endsWith("DEFCoN\\tf_density_count"));
    }
}
