"""The history site: every stored run, per machine key and case, each metric over runs in commit order, the change
points between consecutive runs and the gate's latest verdicts (``python -m parabench history``)."""
