"""``mvit3`` sub-commands contributed by the ``quantization`` package:
``export``, ``evaluate-tflite``, ``benchmark``, ``edgetpu-report``,
``inspect-tflite`` and ``qat``."""

from __future__ import annotations

import os

from mvit3_keras import cli_args
from quantization.export_options import FLOAT_ISLANDS, QUANT_TYPES, TARGETS, parse_keep_float
from quantization.qat_config import TARGETS as QAT_TARGETS
from training.tasks import task_names


def _add_data_args(p, *, use: str, required: bool, split_default: str | None) -> None:
    """The data flags of the commands that read a dataset through a training recipe's
    evaluation transform (``split_default`` None: no ``--split``, the command reads the
    dataset's own train and validation splits)."""
    cli_args.add_dataset(p, use=use, required=required)
    if split_default is not None:
        cli_args.add_split(p, default=split_default)
    p.add_argument(
        "--recipe",
        default=None,
        help="training recipe whose evaluation transform preprocesses the images "
        "(default: the model's official recipe; 'demo' for --dataset demo)",
    )
    p.add_argument(
        "--model-name",
        default=None,
        metavar="MODEL",
        help="variant name, to pick the default recipe (default: the one the .keras file records)",
    )
    cli_args.add_task(
        p, choices=task_names(), default_text="what the .keras file records, else classification"
    )
    cli_args.add_data_dirs(p, manual_dir=False)


def _add_export_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a .keras model to a checked, verified .tflite (fp32 ... int8, QAT)",
    )
    p.add_argument(
        "model", metavar="MODEL.keras", help="float model, or a QAT model from `mvit3 qat`"
    )
    cli_args.add_output(p, metavar="FILE.tflite", use="the .tflite to write", required=True)
    p.add_argument(
        "--labels",
        default=None,
        metavar="FILE",
        help="class names, one per line: embeds TFLite Model Metadata (normalization, labels, "
        "outputs) for MediaPipe Tasks / the LiteRT Task Library (default: the labels.txt a "
        "training run wrote beside MODEL.keras; 'none': no metadata)",
    )
    p.add_argument(
        "--quant",
        default=None,
        choices=QUANT_TYPES,
        help="default: the target's (cpu/generic int8, npu/edgetpu int8_full, gpu fp16)",
    )
    p.add_argument(
        "--target",
        default="cpu",
        choices=TARGETS,
        help="device: cpu (XNNPACK, default), npu (NNAPI, full-integer), edgetpu, gpu "
        "(float16), generic (every op int8, float I/O)",
    )
    p.add_argument(
        "--calibration-images",
        default=None,
        metavar="DIR",
        help="calibrate on a folder of JPEG / PNG images (any size; the model's evaluation "
        "transform resizes them), instead of --dataset",
    )
    cli_args.add_image_size(p, use="static input size", default_text="the model's")
    cli_args.add_batch_size(p, default=1, use="static batch of the .tflite")
    _add_calibration_samples(p, default=200)
    p.add_argument(
        "--keep-float",
        default=None,
        help=f"CPU int8: keep {', '.join(FLOAT_ISLANDS)} in float32 (comma separated; "
        "'none': every op int8; default: the target's choice)",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip running the file in a separate LiteRT process",
    )
    cli_args.add_json(p, what="the export report")
    _add_data_args(p, use="calibration data", required=False, split_default="train")
    p.set_defaults(handler=_cmd_export)


def _add_evaluate_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate-tflite",
        help="accuracy of a .tflite in LiteRT side by side with the float Keras model",
    )
    p.add_argument("tflite", metavar="FILE.tflite", help="the model to evaluate")
    p.add_argument(
        "--keras",
        default=None,
        metavar="MODEL.keras",
        help="the float (or QAT) Keras model to compare with",
    )
    cli_args.add_count(p, "--limit", help="evaluate on the first N images")
    cli_args.add_threads(p)
    p.add_argument("--ignore-index", type=int, default=255, help="segmentation ignore label")
    cli_args.add_json(p, what="the evaluation")
    _add_data_args(p, use="evaluation data", required=True, split_default="validation")
    p.set_defaults(handler=_cmd_evaluate)


def _add_file_tool_parsers(subparsers) -> None:
    """``benchmark``, ``edgetpu-report`` and ``inspect-tflite``: tools on a .tflite file."""
    p = subparsers.add_parser(
        "benchmark", help="LiteRT latency (XNNPACK): warm-up, median, p90; optional per-op profile"
    )
    p.add_argument(
        "tflite", nargs="+", metavar="FILE.tflite", help="the models to time (several: one table)"
    )
    cli_args.add_threads(p)
    cli_args.add_count(p, "--runs", help="timed runs (default: 50)", default=50)
    cli_args.add_count(
        p, "--warmup", help="untimed runs first (default: 10)", default=10, zero_ok=True
    )
    p.add_argument("--profile", action="store_true", help="per-op profile (one-op models)")
    p.add_argument("--no-xnnpack", action="store_true", help="builtin kernels only")
    cli_args.add_json(p, what="the timings")
    p.set_defaults(handler=_cmd_benchmark)

    p = subparsers.add_parser(
        "edgetpu-report",
        help="op-by-op check of a .tflite against the published Edge TPU constraints",
    )
    p.add_argument(
        "tflite", metavar="FILE.tflite", help="full-integer model, e.g. export --target edgetpu"
    )
    p.add_argument("--verbose", action="store_true", help="one line per op")
    cli_args.add_json(p, what="the report")
    p.set_defaults(handler=_cmd_edgetpu)

    p = subparsers.add_parser("inspect-tflite", help="ops, versions, dtypes and I/O quantization")
    p.add_argument("tflite", metavar="FILE.tflite", help="the model to inspect")
    cli_args.add_count(p, "--ops", help="also list the first N ops", default=0, zero_ok=True)
    cli_args.add_json(p, what="the report")
    p.set_defaults(handler=_cmd_inspect)


def _add_qat_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "qat",
        help="quantization-aware fine-tuning of a trained float model (then export --quant qat)",
    )
    p.add_argument("model", metavar="MODEL.keras", help="the trained float model")
    cli_args.add_output(p, metavar="FILE.keras", use="the QAT model to write", required=True)
    p.add_argument(
        "--epochs", type=cli_args.positive_int, default=3, metavar="N", help="(default: 3)"
    )
    p.add_argument(
        "--lr",
        type=cli_args.positive_float,
        default=5e-5,
        help="peak learning rate (cosine decay)",
    )
    cli_args.add_batch_size(p, default=64, use="training batch")
    cli_args.add_count(p, "--steps-per-epoch", help="(default: the training recipe's)")
    _add_calibration_samples(p, default=256)
    p.add_argument("--target", default="generic", choices=QAT_TARGETS)
    p.add_argument("--keep-float", default="", help="generic target: attention,normalization")
    p.add_argument(
        "--export",
        default=None,
        metavar="FILE.tflite",
        help="also export the result with --quant qat",
    )
    _add_data_args(p, use="training data", required=True, split_default=None)
    p.set_defaults(handler=_cmd_qat)


def _add_calibration_samples(p, *, default: int) -> None:
    cli_args.add_count(
        p,
        "--calibration-samples",
        help=f"images for the int8 ranges (default: {default})",
        default=default,
    )


def register(subparsers) -> None:
    """Add this package's sub-commands to the ``mvit3`` parser."""
    _add_export_parser(subparsers)
    _add_evaluate_parser(subparsers)
    _add_file_tool_parsers(subparsers)
    _add_qat_parser(subparsers)


def _input_hw(model, image_size):
    """``--image-size`` (``(h, w)``, parsed by :func:`mvit3_keras.cli_args.parse_image_size`),
    else the model's input size."""
    if image_size:
        return image_size
    shape = model.inputs[0].shape
    return int(shape[1]), int(shape[2])


def recorded_identity(args, model) -> tuple:
    """``(variant name, task)``: the command line's, else what the saved model records
    (:func:`mvit3_keras.model_record`), else ``(None, "classification")``."""
    from mvit3_keras import model_record

    record = model_record(model) if model is not None else None
    name = args.model_name or (record.variant if record else None)
    task = args.task
    if task is None:
        recorded = record.task if record else None
        task = recorded if recorded in ("classification", "segmentation") else "classification"
    return name, task


def _calibration_data(args, options, h: int, w: int, model=None):
    """Images of ``--dataset`` (recipe evaluation transform), the ``--calibration-images``
    folder (the export reads it), or None when not needed."""
    if args.calibration_images:
        if args.dataset:
            raise ValueError("pass --dataset or --calibration-images, not both")
        return args.calibration_images
    if not args.dataset:
        if options.needs_calibration:
            raise ValueError(
                f"--quant {options.quant.value} needs calibration data: pass "
                "--calibration-images DIR (JPEG / PNG files) or --dataset (the training data, "
                "e.g. --dataset demo or a TFDS name) and --split train"
            )
        return None
    from quantization.data import dataset_arrays

    if h != w:
        raise ValueError(
            f"calibration from --dataset needs a square --image-size, got {h} {w}: pass one "
            "number, or calibrate on --calibration-images DIR (any size)"
        )
    model_name, task = recorded_identity(args, model)
    data, _ = dataset_arrays(
        args.dataset,
        image_size=h,
        split=args.split,
        limit=args.calibration_samples,
        task=task,
        model=model_name,
        recipe=args.recipe,
        data_dir=args.data_dir,
    )
    print(
        f"calibration: {len(data)} images of {args.dataset}/{args.split} "
        f"({h}x{w}, recipe evaluation transform)"
    )
    return data


def _print_export_report(report) -> None:
    from quantization.inspection import format_report

    print(
        f"wrote {report.path} ({report.quant.value}, target {report.target.value}) in "
        f"{report.seconds} s"
    )
    print(format_report(report.file))
    v = report.verify
    if v is not None and v.cosine_vs_float_mean is not None:
        print(
            f"verified in a separate {v.backend} process: output cosine vs the Keras graph "
            f"{v.cosine_vs_float_mean:.5f} (min {v.cosine_vs_float_min:.5f}) on "
            f"{v.num_images} images"
        )
    elif v is not None:
        print(f"verified in a separate {v.backend} process on {v.num_images} images")
    if report.delegates is not None:
        print(report.delegates.format())


def _labels(args, model):
    """``--labels``: the file given, else the run folder's ``labels.txt`` beside the model
    (written by ``mvit3 train``) when it names one class per output channel, else none;
    ``none`` turns the metadata off."""
    from quantization.metadata import read_labels

    if args.labels is not None:
        return None if args.labels == "none" else args.labels
    beside = os.path.join(os.path.dirname(os.path.abspath(args.model)), "labels.txt")
    if not os.path.isfile(beside) or len(model.outputs) != 1:
        return None
    if len(read_labels(beside)) != model.outputs[0].shape[-1]:
        print(f"labels: {beside} does not name one class per output channel; not embedded")
        return None
    print(f"labels: {beside} (the training run's class names)")
    return beside


def _cmd_export(args) -> int:
    from quantization.export import ExportOptions, export_tflite, load_keras_model

    model = load_keras_model(args.model)
    h, w = _input_hw(model, args.image_size)
    options = ExportOptions(
        quant=args.quant,
        target=args.target,
        input_shape=(h, w, int(model.inputs[0].shape[-1])),
        batch_size=args.batch_size,
        keep_float=None if args.keep_float is None else parse_keep_float(args.keep_float),
        num_calibration_samples=args.calibration_samples,
        verify=not args.no_verify,
    )
    data = _calibration_data(args, options, h, w, model)
    report = export_tflite(
        model, args.output, options, representative_data=data, labels=_labels(args, model)
    )
    _print_export_report(report)
    cli_args.emit_json(args.json, report.to_dict())
    return 0


def _cmd_evaluate(args) -> int:
    from quantization.data import dataset_arrays
    from quantization.evaluate import evaluate_tflite, format_evaluation
    from quantization.export import load_keras_model
    from quantization.runtime import TFLiteRunner

    shape = TFLiteRunner(args.tflite).input_shape
    if shape[1] != shape[2]:
        raise ValueError(f"the model input {shape[1:3]} is not square; evaluate from Python")
    keras_model = load_keras_model(args.keras) if args.keras else None
    model_name, task = recorded_identity(args, keras_model)
    images, labels = dataset_arrays(
        args.dataset,
        image_size=int(shape[1]),
        split=args.split,
        limit=args.limit,
        task=task,
        model=model_name,
        recipe=args.recipe,
        data_dir=args.data_dir,
    )
    result = evaluate_tflite(
        args.tflite,
        images,
        labels,
        keras_model=keras_model,
        task=task,
        ignore_index=args.ignore_index,
        num_threads=args.threads,
    )
    print(format_evaluation(result, name=args.tflite))
    cli_args.emit_json(args.json, result)
    return 0


def _cmd_benchmark(args) -> int:
    from quantization.benchmark import (
        benchmark_tflite,
        format_benchmark,
        format_profile,
        profile_ops,
    )

    results = []
    for path in args.tflite:
        result = benchmark_tflite(
            path,
            num_threads=args.threads,
            warmup=args.warmup,
            runs=args.runs,
            use_xnnpack=not args.no_xnnpack,
        )
        print(format_benchmark(result))
        if args.profile:
            profile = profile_ops(path, num_threads=args.threads, use_xnnpack=not args.no_xnnpack)
            print(format_profile(profile))
            result["profile"] = {
                "by_type": profile["by_type"],
                "sum_ms": profile["sum_ms"],
                "slowest_ops": sorted(profile["ops"], key=lambda r: -(r["ms"] or 0))[:15],
            }
        results.append(result)
    if len(results) > 1:
        base = results[0]["median_ms"]
        for r in results[1:]:
            print(f"{r['model']}: {base / r['median_ms']:.2f}x the speed of {results[0]['model']}")
    cli_args.emit_json(args.json, results if len(results) > 1 else results[0])
    return 0


def _cmd_edgetpu(args) -> int:
    from quantization.edgetpu import edgetpu_report, format_edgetpu_report

    report = edgetpu_report(args.tflite)
    print(format_edgetpu_report(report, verbose=args.verbose))
    cli_args.emit_json(args.json, report)
    return 0


def _cmd_inspect(args) -> int:
    from quantization.inspection import format_report, inspect_tflite

    report = inspect_tflite(args.tflite)
    print(format_report(report, max_ops=args.ops))
    cli_args.emit_json(args.json, report.to_dict())
    return 0


def _cmd_qat(args) -> int:
    from quantization.qat_config import QuantizeConfig
    from quantization.qat_train import qat_finetune

    config = QuantizeConfig(target=args.target, keep_float=parse_keep_float(args.keep_float))
    summary = qat_finetune(
        args.model,
        args.dataset,
        args.output,
        epochs=args.epochs,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        steps_per_epoch=args.steps_per_epoch,
        calibration_samples=args.calibration_samples,
        recipe=args.recipe,
        model_name=args.model_name,
        task=args.task,
        config=config,
        data_dir=args.data_dir,
    )
    print(
        f"wrote {args.output}: validation top-1 float {100 * summary['val_top1_float']:.2f}% "
        f"-> QAT {100 * summary['val_top1_qat']:.2f}% ({summary['num_val_images']} images, "
        f"{summary['seconds']} s)"
    )
    if args.export:
        from quantization.export import export_tflite

        report = export_tflite(args.output, args.export, quant="qat", target=args.target)
        print(
            f"wrote {args.export}: {report.file.size_bytes / 1024:.0f} KiB, output cosine vs "
            f"the QAT model {report.verify.cosine_vs_float_mean:.5f}"
        )
    return 0
