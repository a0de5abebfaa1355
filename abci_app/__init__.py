"""abci_app"""
