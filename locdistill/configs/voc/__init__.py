"""Pascal VOC configs (VOC07+12 trainval → VOC2007 test) and the helper that makes them."""


def voc0712(config):
    """Turn a COCO GFL config into the LD code's VOC experiment, in place.

    20 classes; train on VOC2007 + VOC2012 trainval repeated 3× per epoch, test on
    VOC2007 test (VOC mAP, 11-point as the VOC2007 devkit); 4 epochs with the learning
    rate divided by 10 after epoch 3; 3 images per GPU (the LD code: 2 GPUs × 3 images,
    lr 0.00375 = 0.01 × 6 / 16, which the scaling rule gives); input scale (1333, 800)
    as the LD code's VOC configs (not mmdetection's usual (1000, 600)).
    """
    config.model.num_classes = 20
    d = config.data
    d.dataset = "voc"
    d.voc_root = "data/VOCdevkit"
    d.voc_train = ("VOC2007/trainval", "VOC2012/trainval")
    d.voc_val = ("VOC2007/test",)
    d.classes = None  # the 20 VOC classes
    d.repeat = 3
    d.batch_size = 3
    d.img_scale = (1333, 800)
    t = config.train
    t.epochs = 4
    t.milestones = (3,)
    return config
