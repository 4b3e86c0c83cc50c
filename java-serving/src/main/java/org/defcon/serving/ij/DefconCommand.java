package org.defcon.serving.ij;

import ij.IJ;
import ij.ImagePlus;
import ij.Prefs;
import ij.WindowManager;
import ij.gui.GenericDialog;
import ij.gui.Roi;
import ij.measure.Calibration;
import ij.plugin.PlugIn;

import java.awt.Rectangle;
import java.io.File;

import org.defcon.serving.DefconException;
import org.defcon.serving.DefconModel;

/**
 * What the two DEFCoN commands share: the dialog (model folder, box size), loading the
 * model, processing the whole stack with progress, and showing the results.
 */
abstract class DefconCommand implements PlugIn {

    static final String MODEL_KEY = "defcon.serving.model";
    static final String BOX_KEY = "defcon.serving.box";
    static final int DEFAULT_BOX = 7;

    /** The dialog's title. */
    abstract String title();

    /** Which maps to show. */
    abstract StackCounter.Maps maps();

    /** Title of the shown map stack, from the image's title. */
    abstract String mapTitle(String imageTitle);

    /** {@code Fiji.app/plugins/DEFCoN/tf_density_count}, where {@code defcon export --fiji} puts it. */
    static String defaultModelFolder() {
        String plugins = IJ.getDirectory("plugins");
        if (plugins == null) {
            plugins = "";
        }
        return new File(new File(plugins, "DEFCoN"), "tf_density_count").getPath();
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
        GenericDialog gd = new GenericDialog(title());
        gd.addMessage("Counts emitters in every slice of '" + imp.getTitle() + "' with a DEFCoN model\n"
                + "(a folder written by 'defcon export MODEL --fiji DIR').");
        gd.addDirectoryField("Model folder", Prefs.get(MODEL_KEY, defaultModelFolder()), 40);
        gd.addNumericField("Box size for local counts", Prefs.get(BOX_KEY, DEFAULT_BOX), 0, 4, "pixels");
        gd.showDialog();
        if (gd.wasCanceled()) {
            return;
        }
        String folder = gd.getNextString().trim();
        int box = (int) Math.round(gd.getNextNumber());
        if (box < 1) {
            IJ.error(title(), "The box size must be at least 1 pixel.");
            return;
        }
        Prefs.set(MODEL_KEY, folder);
        Prefs.set(BOX_KEY, box);
        try {
            process(imp, folder, box);
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

    private void process(ImagePlus imp, String folder, int box) {
        Roi roi = imp.getRoi();
        Rectangle region = roi == null || !roi.isArea() ? null : roi.getBounds();
        IJ.showStatus(title() + ": loading " + folder);
        try (DefconModel model = DefconModel.load(folder)) {
            final long start = System.currentTimeMillis();
            StackCounter.Result result = StackCounter.count(model, imp.getStack(), region, box, maps(),
                    (done, total) -> {
                        IJ.showProgress(done, total);
                        IJ.showStatus(title() + ": slice " + done + "/" + total);
                    });
            IJ.showStatus(title() + ": " + imp.getStackSize() + " slices in "
                    + (System.currentTimeMillis() - start) / 1000.0 + " s");
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
            result.table.show("DEFCoN counts of " + imp.getTitle());
        }
    }
}
