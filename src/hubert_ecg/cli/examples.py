"""The examples that end each command's ``--help`` (one home, so every command has them).

Every line starting with ``hubert-ecg`` is parsed by the test suite against the real parser, so an
example cannot drift from the options it shows. A new command needs an entry here.
"""

from __future__ import annotations

EXAMPLES: dict[str, str] = {
    "inspect": """\
examples:
  hubert-ecg inspect records/                           what each file holds: format, rate, units, warnings
  hubert-ecg inspect records/ --plot plots/             one clinical 12-lead page per record (3x4 + rhythm strip)
  hubert-ecg inspect rec.npy --fs 250 --plot plots/ --plot-model-input
                                                        a bare array at 250 Hz, with a raw-vs-model-input plot
""",
    "prepare": """\
examples:
  hubert-ecg prepare records/ --out store/ --val-fraction 0.1 --workers 4
  hubert-ecg prepare records/ --labels labels.csv --split-column split --out store/
""",
    "datasets": """\
examples:
  hubert-ecg datasets ptbxl --root /data/ptb-xl --task superdiag --out ptbxl/
  hubert-ecg datasets ludb --root /data/ludb --out ludb/
""",
    "info": """\
examples:
  hubert-ecg info Edoardo-BS/hubert-ecg-small
  hubert-ecg info run/best --json
""",
    "convert": """\
examples:
  hubert-ecg convert hubert_ecg_small.pt --out small/
  hubert-ecg convert Edoardo-BS/hubert-ecg-base --out base/ --dtype bfloat16
""",
    "export": """\
examples:
  hubert-ecg export run/best --out model.onnx --with-mask
  (NumPy-only deployment of the file: hubert_ecg.deploy.OnnxECG("model.onnx").predict(signal, fs=500))
""",
    "features": """\
examples:
  hubert-ecg features store/ --out feats/ --sample-fraction 0.1
  hubert-ecg features store/ --kind hidden --checkpoint it1/best --layer 6 --out feats2/
""",
    "cluster": """\
examples:
  hubert-ecg cluster feats/ --k 100 --out km/          writes km/k100/kmeans.safetensors
  hubert-ecg cluster feats/ --k 50 100 200 --out sweep/      several K: held-out quality and a plot
""",
    "label": """\
examples:
  hubert-ecg label store/ --kmeans km/k100/kmeans.safetensors --name it1
""",
    "pretrain": """\
examples:
  hubert-ecg pretrain store/ --targets it1 --size small --out it1/
  hubert-ecg pretrain store/ --targets it2 --init-from it1/best --out it2/
""",
    "pretrain-loop": """\
examples:
  hubert-ecg config pretrain-loop > loop.yaml
  hubert-ecg pretrain-loop loop.yaml --dry-run            which stages are done
""",
    "finetune": """\
examples:
  hubert-ecg finetune store/ --init Edoardo-BS/hubert-ecg-small --out run/
  hubert-ecg finetune store/ --init small/ --recipe ptbxl-superdiag --out run/
""",
    "evaluate": """\
examples:
  hubert-ecg evaluate run/best store/ --split test --out eval/
  hubert-ecg evaluate run/best store/ --windows sliding --stride 2.5 --aggregate max --out eval/
""",
    "compare": """\
examples:
  hubert-ecg compare runA/best runB/best --store store/ --split test --out compare/
  hubert-ecg compare vendor.csv ours.csv --labels labels.csv --out compare/
""",
    "explain": """\
examples:
  hubert-ecg explain run/best rec.hea --label AF --out af.png
""",
    "store-export": """\
examples:
  hubert-ecg store-export store/ --out rows.parquet
  hubert-ecg store-export store/ --split test --out test.parquet
""",
    "store-import": """\
examples:
  hubert-ecg store-import rows.parquet --out store/
""",
    "predict": """\
examples:
  hubert-ecg predict run/best my_ecgs/ --out predictions.csv --workers 4
  hubert-ecg predict run/best my_ecgs/ --labels labels.csv --out predictions.csv   adds y_true_<label>
""",
    "embed": """\
examples:
  hubert-ecg embed Edoardo-BS/hubert-ecg-small my_ecgs/ --out embeddings.parquet
  hubert-ecg embed small/ my_ecgs/ --layer 6 --out embeddings.npy      + embeddings.ids.csv
""",
    "demo": """\
examples:
  hubert-ecg demo --quick
  hubert-ecg demo --data my_folder/ --out demo_out/
""",
    "config": """\
examples:
  hubert-ecg config pretrain-loop > loop.yaml
  hubert-ecg config finetune --out recipe.yaml
""",
}
