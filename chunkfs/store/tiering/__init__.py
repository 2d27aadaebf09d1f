"""Tiers (hot → warm → cold) and everything that moves packs between them or reads them there."""
