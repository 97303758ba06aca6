"""Prints SegMoTE's trainable parameters per module for each backbone (SAM's weights are random here:
counts do not depend on them).

    python scripts/count_parameters.py [--backbone sam_vit_b lite_medsam] [--num-experts 4 ...]
"""

from __future__ import annotations

import argparse

from segmote_monai.networks import build_segmote
from segmote_monai.networks.summary import parameter_summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", nargs="+", default=["sam_vit_b", "lite_medsam"])
    parser.add_argument("--num-expert-tokens", type=int, default=4)
    parser.add_argument("--num-experts", type=int, default=4)
    parser.add_argument("--expert-hidden-dim", type=int, default=2048)
    parser.add_argument("--num-ppt-queries", type=int, default=2)
    parser.add_argument("--ppt-mlp-dim", type=int, default=2048)
    args = parser.parse_args(argv)
    for backbone in args.backbone:
        model = build_segmote(
            backbone, random_weights=True, num_expert_tokens=args.num_expert_tokens, num_experts=args.num_experts,
            expert_hidden_dim=args.expert_hidden_dim, num_ppt_queries=args.num_ppt_queries,
            ppt_mlp_dim=args.ppt_mlp_dim,
            **({"ppt_heads": 2} if backbone == "tiny" else {}),
        )
        print(f"\n## {backbone}: {model.config()}")
        print(f"| {'module':<34} | {'parameters':>12} |")
        print(f"|{'-' * 36}|{'-' * 13}:|")
        for name, count in parameter_summary(model).items():
            label = f"**{name}**" if name in ("MoTE", "PPT", "trainable", "frozen") else name
            print(f"| {label:<34} | {count:>12,} |")


if __name__ == "__main__":
    main()
