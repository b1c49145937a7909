"""What each task does around its network; for now the detection task's reference post-processing.

:mod:`tinyvim_deploy.tasks.nms` is the reference NMS that every detector export is validated against.
Issue 17 moves the rest of each task's behaviour (preprocessing, results, validation comparison,
evaluation) here, one module per task.
"""
