"""Tomogram picker (RobPicker method): a 3D U-Net trained on noisy labels with meta-learned label
correction and data reweighting, patch-wise inference and connected-component clustering."""
