"""What a run will cost before it starts (issue 19, part 2; begun): the accelerators it may run on and the memory
its training state takes per device."""
