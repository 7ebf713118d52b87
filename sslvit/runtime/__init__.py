"""What every command needs of the machine and the run, below train and eval: the Accelerator
and device facts (``devices``), the CPU allocator setting, the schedules, the errors that
end a command as one sentence (``errors``), and how a launched process ends (``process_end``)."""
