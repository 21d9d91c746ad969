"""Names of the spec language that the command line needs before (or without) the spec's models: ``bertc build
--variants`` checks and lists them, in an environment that may lack pydantic (one set up to run builds only)."""

# export.variants: the reduced-precision and padding-free artifacts a build can add (bertc.spec's ExportSpec)
EXPORT_VARIANTS = ("onnx_int8", "onnx_fp16", "tflite_int8", "tflite_fp16",
                   "onnx_packed", "onnx_packed_int8", "onnx_packed_fp16")
