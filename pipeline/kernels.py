"""The Gaussian kernel family NOpt's MMD loss and the mmd doping selector share."""

# bandwidths as multiples of the median pairwise squared distance (the median heuristic)
BANDWIDTH_SCALES = (0.5, 1.0, 2.0)
