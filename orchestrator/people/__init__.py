"""People: faces from the faces analyzer grouped into persons that users name, merge and split."""
