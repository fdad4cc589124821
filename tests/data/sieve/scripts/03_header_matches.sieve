require "fileinto";
if header :matches "subject" "*test*" { fileinto "Archive"; }
