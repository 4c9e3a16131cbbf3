import numpy as np

from uxbseg.classes import IGNORE, class_to_las_code, las_code_to_class, mask_value_to_class


def test_maps_and_ignore():
    assert mask_value_to_class(np.array([0, 76, 150, 200, 1])).tolist() == [0, 1, 2, IGNORE, IGNORE]
    assert las_code_to_class(np.array([2, 27, 6, 1, 5])).tolist() == [0, 1, 2, IGNORE, IGNORE]
    assert class_to_las_code(np.array([0, 1, 2])).tolist() == [2, 27, 6]
