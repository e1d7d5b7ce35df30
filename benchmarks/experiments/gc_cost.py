"""CPU of one full garbage collection with azureml.core loaded, then MLflow and its sqlite store,
then after gc.freeze(): 65 ms, 235 ms, 0 ms on 2026-12-03 (see NOTES.md). Run in a scratch folder."""
import gc, time, sys
def full():
    t = time.thread_time(); gc.collect(); return (time.thread_time() - t) * 1000
from azureml.core import Run
print("azureml.core only: full collection %.0f ms, %d objects" % (full(), len(gc.get_objects())))
from mlflow.tracking import MlflowClient
MlflowClient("sqlite:///mlflow.db").search_experiments()
print("+ mlflow & its sqlite store: full collection %.0f ms, %d objects" % (full(), len(gc.get_objects())))
gc.freeze()
print("after gc.freeze(): full collection %.0f ms" % full())
