"""`mugv encode MANIFEST --out SHARDS`: kept clips -> VAE latents + text embeddings in shards."""

from __future__ import annotations

import argparse

from mugv.config import VAE_PRECISIONS
from mugv.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "encode",
        description="Encode every kept clip of a curation manifest with the VAE and a text encoder into "
        "safetensors shards with a Parquet index (see docs/data.md). Resumable: rerun to continue.",
    )
    parser.add_argument("manifest", help="manifest.parquet written by `mugv curate`, or a preference manifest "
                        "(dpo.jsonl / kto.jsonl of `mugv annotate export`, docs/preference.md); path or fsspec URL")
    parser.add_argument("--out", required=True, help="shard folder or fsspec URL")
    parser.add_argument("--buckets", default="",
                        help="FRAMESxHEIGHTxWIDTH list, e.g. 1x256x256,17x256x448 "
                        "(default: 256p + 360p, 1/49/73 frames)")
    parser.add_argument("--text-encoder", choices=("minilm", "t5"), default="minilm")
    parser.add_argument("--text-encoder-path", default="", help="local folder of the T5 encoder + tokenizer")
    parser.add_argument("--text-max-tokens", type=int, default=0, help="0: 128 for MiniLM, 300 for T5")
    parser.add_argument("--text-dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--aesthetic", type=float, default=6.0,
                        help="score appended to captions as ' aesthetic score: S.' (negative: none)")
    parser.add_argument("--vae-preset", default="mugv", help="VAE preset (mugv, tiny, tiny-shortcut)")
    parser.add_argument("--vae-weights", default="", help="VAE checkpoint (ours, MUG-V or diffusers layout)")
    parser.add_argument("--random-vae", action="store_true", help="allow random VAE weights (tests and demos)")
    parser.add_argument("--sample-posterior", action="store_true",
                        help="store a posterior sample as the release does (default: the mode)")
    parser.add_argument("--also-images", action="store_true",
                        help="also store each clip's middle frame as an image sample (needs 1-frame buckets)")
    parser.add_argument("--vae-tile", type=int, default=0, help="spatial tile size in pixels (0: untiled)")
    parser.add_argument("--vae-precision", choices=VAE_PRECISIONS, default="auto",
                        help="VAE compute precision: fp32, tf32, bf16 (autocast) or auto: bf16 on CUDA, fp32 on CPU; "
                        "latents are float32 either way (docs/vae.md)")
    parser.add_argument("--shard-size", type=int, default=64, help="samples per shard")
    parser.add_argument("--latent-dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--workers", type=int, default=1, help="encoding processes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=0, help="encode at most this many clips (0: all)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad row instead of skipping it")
    parser.add_argument("--aspect", default="overall",
                        help="preference manifests with an `aspect` column: encode this judged aspect's rows "
                             "(default: overall)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from mugv.data.buckets import default_buckets, parse_buckets
    from mugv.data.encode import EncodeOptions, check_options, run_encode
    from mugv.models.vae.precision import describe_vae_precision
    from mugv.utils.device import resolve_device

    try:
        buckets = parse_buckets(args.buckets) if args.buckets else default_buckets()
    except ValueError as exc:
        raise ConfigError(f"--buckets {args.buckets}: {exc}") from exc
    opts = EncodeOptions(
        manifest=args.manifest, out=args.out, buckets=buckets, text_encoder=args.text_encoder,
        text_encoder_path=args.text_encoder_path, text_max_tokens=args.text_max_tokens, text_dtype=args.text_dtype,
        aesthetic=None if args.aesthetic < 0 else args.aesthetic, vae_preset=args.vae_preset,
        vae_weights=args.vae_weights, random_vae=args.random_vae, also_images=args.also_images,
        sample_posterior=args.sample_posterior,
        vae_tile=args.vae_tile, vae_precision=args.vae_precision, shard_size=args.shard_size,
        latent_dtype=args.latent_dtype, workers=args.workers,
        device=args.device, strict=args.strict, progress=not args.no_progress, limit=args.limit,
        aspect=args.aspect,
    )
    check_options(opts)  # before the log line, so that a bad option is the first thing said
    print(f"mugv encode: {describe_vae_precision(opts.vae_precision, resolve_device(opts.device))}")
    summary = run_encode(opts)
    print(f"mugv encode: {summary.format()} -> {args.out}")
    return 0
