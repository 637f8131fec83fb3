"""ONNX export for `kdtrain export --format onnx`, run by kdtrain with the project's
Python (KDTRAIN_PYTHON, or the virtual environment scripts/setup.sh makes). kdtrain
embeds this file and passes it to python -c; it is here to be read and run by hand.

libtorch has no ONNX exporter, so this goes through PyTorch's own, torch.onnx.export
(the dynamo route, which needs the onnx and onnxscript packages).

Usage: export_onnx.py WEIGHTS WIDTHS OUT METADATA
  WEIGHTS   safetensors in the layout of kdtrain's `--format safetensors-torch`:
            "1.weight", "1.bias", "3.weight", ... of
            Sequential(Flatten, Linear, ReLU, Linear, ..., Linear);
            or, with WIDTHS = torchscript, a TorchScript file (kdtrain's own trace of a
            CNN, taking [batch, C, H, W]), converted by the TorchScript-based exporter
  WIDTHS    layer widths from input to logits, e.g. 784,128,10 (C*H*W, ..., classes),
            or the word torchscript
  OUT       the .onnx file to write (kdtrain renames it into place)
  METADATA  a JSON file whose top-level string values are stored as the model's
            metadata_props (kdtrain passes the export description under "kdtrain.export",
            whose input.shape gives the image's [batch, C, H, W]; [batch, 1, 28, 28],
            Fashion-MNIST's, without it)

The graph: input "image" [batch, C, H, W] float32 in [0, 1] with only batch symbolic;
first output "logits" [batch, classes] float32 (no softmax).
"""

import json
import os
import sys
import warnings


def main(argv):
    if len(argv) != 4:
        sys.exit(f"usage: export_onnx.py WEIGHTS WIDTHS OUT METADATA (got {len(argv)} arguments)")
    weights, widths, out, meta_path = argv
    warnings.filterwarnings("ignore")
    import onnx
    import safetensors.torch
    import torch

    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    try:
        described = json.loads(meta["kdtrain.export"])
        image = [int(d) for d in described["input"]["shape"][1:]]
        classes = int(described["output"]["shape"][1])
    except (KeyError, TypeError, ValueError):
        image, classes = [1, 28, 28], None
    example = torch.rand(2, *image)

    if widths == "torchscript":
        import io

        model = torch.jit.load(weights, map_location="cpu").eval()
        buf = io.BytesIO()
        torch.onnx.export(
            model,
            (example,),
            buf,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
        proto = onnx.load_from_string(buf.getvalue())
        widths = [None, classes]
    else:
        widths = [int(w) for w in widths.split(",")]
        layers = [torch.nn.Flatten()]
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            if i:
                layers.append(torch.nn.ReLU())
            layers.append(torch.nn.Linear(a, b))
        model = torch.nn.Sequential(*layers).eval()
        model.load_state_dict(safetensors.torch.load_file(weights))
        batch = torch.export.Dim("batch", min=1)
        program = torch.onnx.export(
            model,
            (example,),
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            external_data=False,
        )
        proto = program.model_proto

    onnx.helper.set_model_props(proto, {k: v for k, v in meta.items() if isinstance(v, str)})

    # Check what the documentation promises before anything is written.
    onnx.checker.check_model(proto)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or not isinstance(dims[0], str) or dims[1:] != image:
        sys.exit(f"unexpected input shape {dims}, expected [batch, {', '.join(map(str, image))}]")
    out_dims = [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    if len(out_dims) != 2 or (widths[-1] is not None and out_dims[1] != widths[-1]):
        sys.exit(f"unexpected output shape {out_dims}, expected [batch, {widths[-1]}]")

    onnx.save(proto, out)
    with open(out, "rb") as f:
        os.fsync(f.fileno())


if __name__ == "__main__":
    main(sys.argv[1:])
