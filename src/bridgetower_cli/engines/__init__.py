"""Engines that embed images past this process (Ray Data)."""
