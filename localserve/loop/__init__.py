"""The continuous loop: capture and feedback become data (harvest), data becomes a fine-tune from the base (finetune), and a fine-tune goes through export, the gate and the A/B router (retrain)."""
