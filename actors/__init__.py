"""panray.actors"""
