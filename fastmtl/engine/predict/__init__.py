"""The prediction room: ``job.predict`` (batch inference over files), the runners and the atomic output writer."""
