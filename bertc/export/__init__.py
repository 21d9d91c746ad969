"""Exporters: Keras model -> ONNX (onnx.py) and TFLite (tflite.py)."""
