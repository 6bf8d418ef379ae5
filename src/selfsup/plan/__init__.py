"""What a run will cost before it starts (issue 19): the accelerators it may run on, the memory its training state
and one micro-batch take per device, its FLOPs, time, energy and cost."""
