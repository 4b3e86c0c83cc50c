"""Models shipped with defcon (``*.keras``, each with a model card ``*.md``).

The published DEFCoN model ``defcon_tf13.h5`` is not shipped here: DEFCoN's
``pkg_resources.resource_filename('defcon.resources', 'defcon_tf13.h5')`` gives a
path that does not exist, and ``FCN.from_file`` on it says where to download the
model. Use :meth:`defcon.networks.FCN.published`.
"""
