# The YOLO-family digits teacher: YOLOv8-s trained as the demo's GFL teacher is (demo/gfl_r34_digits_teacher):
# on 2,000 *other* scenes (digits_seed 1) with exact boxes, 16 epochs: a model from elsewhere, never shown
# the student's images nor their noisy boxes. The teacher of yolo/ld_yolov8s_yolov8n_digits:
#   locdistill train yolo/yolov8s_digits_teacher --work-dir work_dirs/yolov8s_digits_teacher
# (yolo/yolov8s_digits is the same model on the student's own data, for comparing scales.)
from locdistill.configs.yolo._digits import yolov8_digits

config = yolov8_digits("s")
d = config.data
d.digits_seed = 1  # other scenes than the student's (seed 0)
d.digits_box_noise = 0.0

t = config.train
t.epochs = 16
t.milestones = (12, 15)
