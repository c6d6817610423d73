"""Does the OOD score depend on the engine? camvid_fcn8s: torch fp32 vs OpenVINO bf16 vs ONNX Runtime fp32 on every 40th CamVid test image and every 6th OOD image; prints the largest difference per component against torch fp32 (run: WORKBENCH_ALLOCATOR=system python scripts/check_ood_engines.py > benchmarks/ood_engines.json)."""
import json
from workbench.data.datasets import build_dataset
from workbench.evaluation.ood import ood_images, layout_prior
from workbench.inference.ood import component_scores
from workbench.inference.predictor import Predictor
from workbench.system.machine import machine_description
prior,_=layout_prior()
test=[p for p,_ in build_dataset("camvid","test").files][::40]
ood=[im for s,n,im in ood_images()][::6]
imgs=test+ood
res={}
for eng,prec in (("torch","fp32"),("openvino","bf16"),("onnxruntime","fp32")):
    pr=Predictor("checkpoints/camvid_fcn8s.json", device="cpu", engine=eng, precision=prec)
    res[f"{pr.engine} {pr.engine_precision}"]=[component_scores(pr.predict(i).logits_work, prior) for i in imgs]
base=res["torch fp32"]
out={"images": len(imgs), "machine": machine_description()}
for k,v in res.items():
    out[k]={c: float(max(abs(a[c]-b[c]) for a,b in zip(v,base))) for c in base[0]}
print(json.dumps(out, indent=1))
