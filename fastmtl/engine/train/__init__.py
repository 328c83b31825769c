"""The training room: ``job.train(config)``, its configuration, batches (DataLoader or device-resident), steps,
schedule, state and records."""
