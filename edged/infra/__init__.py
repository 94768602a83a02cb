"""Small infrastructure shared by every part: JSON payload encoding, input guards, sd_notify."""
