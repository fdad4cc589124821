require "fileinto";
if header :contains "from" "@" { fileinto "Archive"; }
