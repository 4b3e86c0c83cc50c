package org.defcon.serving.ij;

import ij.IJ;
import ij.ImagePlus;
import ij.Macro;
import ij.Prefs;
import ij.WindowManager;
import ij.gui.GenericDialog;
import ij.gui.Roi;
import ij.macro.Interpreter;
import ij.measure.Calibration;
import ij.plugin.PlugIn;
import ij.util.Tools;

import java.awt.Rectangle;
import java.io.File;

import org.defcon.serving.DefconException;
import org.defcon.serving.DefconModel;

/**
 * What the two DEFCoN commands share: the dialog (model folder, box size) or the macro
 * options, loading the model, processing the whole stack with progress, and showing the
 * results.
 *
 * <p>Macro options: {@code model=} (ours: the dialog's "Model folder"), or the keys of the
 * original DEFCoN-ImageJ plugin, whose menu entries these commands reuse: {@code path=} (its
 * dialog field) and {@code load=} (the key its documentation shows); then {@code box=}. A
 * missing key takes the dialog's default (the last value used).
 */
abstract class DefconCommand implements PlugIn {

    static final String MODEL_KEY = "defcon.serving.model";
    static final String BOX_KEY = "defcon.serving.box";
    static final int DEFAULT_BOX = 7;

    /** Macro keys of the model folder, by precedence: ours, then DEFCoN-ImageJ's. */
    static final String[] MODEL_MACRO_KEYS = {"model", "path", "load"};
    /** Macro key of the box size. */
    static final String BOX_MACRO_KEY = "box";

    /** What the dialog or the macro options ask for. */
    static final class Settings {
        final String folder;
        final int box;

        Settings(String folder, int box) {
            this.folder = folder;
            this.box = box;
        }

        @Override
        public String toString() {
            return "model=[" + folder + "] box=" + box;
        }
    }

    /** The dialog's title. */
    abstract String title();

    /** Which maps to show. */
    abstract StackCounter.Maps maps();

    /** Title of the shown map stack, from the image's title. */
    abstract String mapTitle(String imageTitle);

    /** Title of the results table: DEFCoN-ImageJ's, so macros selecting it by title work. */
    abstract String tableTitle();

    /** {@code Fiji.app/plugins/DEFCoN/tf_density_count}, where {@code defcon export --fiji} puts it. */
    static String defaultModelFolder() {
        String plugins = IJ.getDirectory("plugins");
        if (plugins == null) {
            plugins = "";
        }
        return new File(new File(plugins, "DEFCoN"), "tf_density_count").getPath();
    }

    /**
     * The settings a macro's options string asks for, as {@code run("Density map...", options)}
     * passes it: the model folder from {@code model=}, else {@code path=}, else {@code load=},
     * else {@code defaultFolder}; the box from {@code box=}, else {@code defaultBox}. Values may
     * be bracketed ({@code path=[/a b/tf_density_count]}) or, as in ImageJ's dialogs, name a
     * macro variable with {@code &}.
     *
     * @throws IllegalArgumentException for an empty folder, or a box that is not a number
     *                                  (rounded, as the dialog does) of at least 1
     */
    static Settings fromMacroOptions(String options, String defaultFolder, int defaultBox) {
        String opts = options == null ? "" : options;
        String folder = null;
        for (String key : MODEL_MACRO_KEYS) {
            folder = Macro.getValue(opts, key, null);
            if (folder != null) {
                break;
            }
        }
        folder = folder == null ? defaultFolder : variable(folder.trim());
        if (folder == null || folder.trim().isEmpty()) {
            throw new IllegalArgumentException("No model folder: give it as model=[/path/to/tf_density_count] "
                    + "(or path=, as in DEFCoN-ImageJ).");
        }
        String boxText = Macro.getValue(opts, BOX_MACRO_KEY, null);
        int box = defaultBox;
        if (boxText != null) {
            double value = Tools.parseDouble(variable(boxText.trim()));
            if (Double.isNaN(value)) {
                throw new IllegalArgumentException("box=" + boxText + ": the box size must be a number of pixels.");
            }
            box = (int) Math.round(value);
        }
        if (box < 1) {
            throw new IllegalArgumentException("The box size must be at least 1 pixel.");
        }
        return new Settings(folder.trim(), box);
    }

    /** {@code &name}: the value of the running macro's variable {@code name}, as ImageJ's dialogs do. */
    private static String variable(String text) {
        if (!text.startsWith("&")) {
            return text;
        }
        Interpreter interp = Interpreter.getInstance();
        String value = interp == null ? null : interp.getVariableAsString(text.substring(1));
        return value == null ? text : value;
    }

    /**
     * The settings of this run: from the macro options when a macro (or {@code IJ.run}) gave
     * some, without a dialog; otherwise from the dialog.
     *
     * @return the settings, or null when the user cancelled the dialog
     * @throws IllegalArgumentException for invalid settings
     */
    Settings settings(ImagePlus imp) {
        String options = Macro.getOptions();
        if (options != null) {
            return fromMacroOptions(options, Prefs.get(MODEL_KEY, defaultModelFolder()),
                    (int) Prefs.get(BOX_KEY, DEFAULT_BOX));
        }
        GenericDialog gd = new GenericDialog(title());
        gd.addMessage("Counts emitters in every slice of '" + imp.getTitle() + "' with a DEFCoN model\n"
                + "(a folder written by 'defcon export MODEL --fiji DIR').");
        gd.addDirectoryField("Model folder", Prefs.get(MODEL_KEY, defaultModelFolder()), 40);
        gd.addNumericField("Box size for local counts", Prefs.get(BOX_KEY, DEFAULT_BOX), 0, 4, "pixels");
        gd.showDialog();
        if (gd.wasCanceled()) {
            return null;
        }
        String folder = gd.getNextString().trim();
        int box = (int) Math.round(gd.getNextNumber());
        if (box < 1) {
            throw new IllegalArgumentException("The box size must be at least 1 pixel.");
        }
        return new Settings(folder, box);
    }

    @Override
    public void run(String arg) {
        ImagePlus imp = WindowManager.getCurrentImage();
        if (imp == null) {
            IJ.noImage();
            return;
        }
        if (imp.getBitDepth() == 24) {
            IJ.error(title(), "RGB images are not supported: DEFCoN counts emitters in one fluorescence "
                    + "channel. Split the channels or convert the image to 8, 16 or 32-bit first.");
            return;
        }
        Settings settings;
        try {
            settings = settings(imp);
        } catch (IllegalArgumentException e) {
            IJ.error(title(), e.getMessage());
            return;
        }
        if (settings == null) {
            return;
        }
        Prefs.set(MODEL_KEY, settings.folder);
        Prefs.set(BOX_KEY, settings.box);
        try {
            process(imp, settings);
        } catch (DefconException | IllegalArgumentException e) {
            IJ.showProgress(1.0);
            IJ.error(title(), e.getMessage());
        } catch (NoClassDefFoundError | UnsatisfiedLinkError e) {
            IJ.showProgress(1.0);
            IJ.error(title(), "TensorFlow for Java (1.x) is not installed: enable the 'TensorFlow' update "
                    + "site (Help > Update... > Manage update sites), or copy libtensorflow-1.15.0.jar and "
                    + "libtensorflow_jni-1.15.0.jar into Fiji.app/jars.\n \n" + e);
        }
    }

    private void process(ImagePlus imp, Settings settings) {
        Roi roi = imp.getRoi();
        Rectangle region = roi == null || !roi.isArea() ? null : roi.getBounds();
        IJ.showStatus(title() + ": loading " + settings.folder);
        try (DefconModel model = DefconModel.load(settings.folder)) {
            final long start = System.currentTimeMillis();
            StackCounter.Result result = StackCounter.count(model, imp.getStack(), region, settings.box, maps(),
                    (done, total) -> {
                        IJ.showProgress(done, total);
                        IJ.showStatus(title() + ": slice " + done + "/" + total);
                    });
            IJ.showStatus(title() + ": " + imp.getStackSize() + " slices in "
                    + (System.currentTimeMillis() - start) / 1000.0 + " s");
            show(imp, region, result);
        }
    }

    /** Shows the maps (if any) and the results table. */
    void show(ImagePlus imp, Rectangle region, StackCounter.Result result) {
        if (result.maps != null) {
            ImagePlus maps = new ImagePlus(mapTitle(imp.getTitle()), result.maps);
            Calibration cal = imp.getCalibration().copy();
            if (region != null) {
                cal.xOrigin -= region.x;
                cal.yOrigin -= region.y;
            }
            maps.setCalibration(cal);
            maps.resetDisplayRange();
            maps.show();
        }
        result.table.show(tableTitle());
    }
}
