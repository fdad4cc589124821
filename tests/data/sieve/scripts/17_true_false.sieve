require ["fileinto", "copy"];
if false { discard; }
if true { fileinto :copy "Archive"; }
