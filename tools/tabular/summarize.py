"""One line per set and mode: detections (median queries to first alert) and benign alerts.
Needs the shared scorer: SCORE_PY=path/to/score.py (default ../shared/tools/score.py)."""
import json,os,subprocess,sys
SCORE=os.environ.get('SCORE_PY', os.path.join(os.path.dirname(__file__), '../../../shared/tools/score.py'))
ab={'boundary_bsearch':'bsearch','hopskipjump':'HSJ','simba':'SimBA','square':'Square','papernot_jbda':'JBDA','uniform_random':'uniform',
    'batch_scoring':'batch','integer_coarse':'int','natural':'natural','near_duplicate_stream':'neardup','retry_duplicates':'retry','single_class':'1class'}
for s in sys.argv[1:]:
  for m in ['schema','noschema']:
    d=json.loads(subprocess.run(['python3',SCORE,'--labels',f'{s}/labels.json','--trace',f'{s}/trace.jsonl.gz','--alerts',f'{s}/alerts_{m}.jsonl','--json'],capture_output=True,text=True).stdout)
    d=list(d.values())[0]; A=[];B=[]
    for t in d['techniques']:
        if t['kind']=='benign': B.append(f"{ab[t['technique']]} {t['alerted']}/{t['clients']}")
        else:
            km='' if t['kind_match_rate'] is None else ('' if t['kind_match_rate']==1 else f" kind {t['kind_match_rate']:.0%}")
            q='' if t['median_qtfa'] is None else f" q{t['median_qtfa']:.0f}"
            A.append(f"{ab[t['technique']]} {t['detected']}/{t['clients']}{q}{km}")
    print(f"{s:10s} {m:8s} | "+', '.join(A)+' | '+', '.join(B))
