"""Detection layer: model files (``models``), frame decoding (``images``), the detector and annotation.

Import the submodules directly; this package stays empty so that ``models`` can be used without
loading onnxruntime and OpenCV.
"""
